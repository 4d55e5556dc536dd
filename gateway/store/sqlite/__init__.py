"""The embedded SQLite store: one file in WAL mode, used by one gateway process at a time.

`store` is the FullStore; `connection` its connections and transactions; `sql` its
statements; `suspensions` and `listing` its sleeps, waits, events and admin reads;
`migrate` applies the shared schema; `filelock` keeps a second process out.
"""

from gateway.store.sqlite.store import MEMORY, SqliteStore, describe_error, path_from_url

__all__ = ["MEMORY", "SqliteStore", "describe_error", "path_from_url"]
