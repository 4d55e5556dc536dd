"""The shared PostgreSQL store (asyncpg): one database that every gateway node uses.

`store` is the FullStore; `connection` its pool, transactions and error mapping; `sql`
its statements; `suspensions` and `listing` its sleeps, waits, events and admin reads;
`migrate` applies the shared schema under an advisory lock.
"""

from gateway.store.postgres.store import PostgresStore, Server, describe_error

__all__ = ["PostgresStore", "Server", "describe_error"]
