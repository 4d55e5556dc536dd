"""PostgreSQL plumbing under the store: the connection pool, migrations at open, one
transaction per call, error mapping, closing.

Holds no domain SQL (the store's modules do, and hand their claims to `_claim`); never
puts the password of a DSN in a message or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Self

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import StoreUnavailable
from gateway.store.postgres.cluster import PostgresCluster
from gateway.store.postgres.migrate import migrate_postgres
from gateway.store.postgres.server import Server, mapped_errors
from gateway.store.records import RunRow
from gateway.store.rows import run_row

log = logging.getLogger("gateway.store.postgres")

Connection = asyncpg.Connection | PoolConnectionProxy
DEFAULT_LOCK_WAIT: Final = 5.0
"""Seconds a statement waits on a row or table lock before it fails as unavailable (and
the writer retries): SQLite's busy_timeout, in PostgreSQL's `lock_timeout`."""
CLOSE_WAIT: Final = 10.0


class PostgresConnections:
    """A pool of connections to one PostgreSQL database that other gateway nodes share.
    The store classes build on it."""

    __slots__ = ("server", "cluster", "_pool", "_closed")

    exclusive = False
    """Other nodes use the same database: a live-looking lease may be theirs."""

    def __init__(self, server: Server, pool: asyncpg.Pool, cluster: PostgresCluster) -> None:
        self.server = server
        self.cluster = cluster
        """The other nodes on this database (presence, takeover, notices)."""
        self._pool = pool
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, pool: int = 10, lock_wait: float | None = None) -> Self:
        """Connect to the database a `postgresql://` URL names and migrate it.

        `pool` is the most connections this node opens; `lock_wait` (seconds, default
        DEFAULT_LOCK_WAIT) how long a statement waits on another session's lock.
        Raises StoreUnavailable when the server cannot be reached or refuses the login.
        """
        server = Server.of(dsn)
        if pool < 1:
            raise ValueError(f"storage.pool must be >= 1, not {pool}")
        wait = DEFAULT_LOCK_WAIT if lock_wait is None else lock_wait
        settings = {"lock_timeout": str(max(1, round(wait * 1000))), "application_name": "gateway"}
        async with mapped_errors(server, "opening"):
            # min_size 0: connections open as load asks for them, and no background task
            # re-opens a floor (with a traceback a second) while the server is down.
            connections = await asyncpg.create_pool(
                dsn, min_size=0, max_size=pool, server_settings=settings
            )
            try:
                async with connections.acquire() as conn:
                    applied = await migrate_postgres(conn)
            except BaseException:
                await connections.close()
                raise
        if applied:
            log.info("postgresql %s: applied schema migrations %s", server, applied)
        return cls(server, connections, PostgresCluster(dsn, server))

    @contextlib.asynccontextmanager
    async def _transaction(
        self, doing: str, *, refusals: bool = False
    ) -> AsyncIterator[Connection]:
        """One transaction on a pooled connection: all of it commits, or none.

        A connection whose server went away is dropped by the pool and a new one opened
        on the next call, so the store recovers by itself once the server is back.
        """
        self._check_open()
        async with mapped_errors(self.server, doing, refusals=refusals):
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    async def _claim(
        self, doing: str, select: str, params: Sequence[Any], update: str, values: Sequence[Any]
    ) -> list[RunRow]:
        """Lock the runs `select` picks (FOR UPDATE SKIP LOCKED) and run `update` on them
        (its last parameter: their ids), in one transaction: two nodes claiming at once
        never get the same run, nor wait on each other. Returns the rows as read."""
        async with self._transaction(doing) as conn:
            rows = [run_row(row) for row in await conn.fetch(select, *params)]
            if rows:
                await conn.execute(update, *values, [row.run_id for row in rows])
        return rows

    async def close(self) -> None:
        """Close the pool, waiting a bounded time for calls in flight; later calls raise."""
        if self._closed:
            return
        self._closed = True
        await self.cluster.leave()
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_WAIT)
        except TimeoutError:
            log.warning("postgresql %s: connections still busy at close, terminated", self.server)
            self._pool.terminate()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"postgresql store {self.server} is closed")

    async def _read_one(self, sql: str, *params: Any) -> Any:
        self._check_open()
        async with mapped_errors(self.server, "reading"):
            return await self._pool.fetchrow(sql, *params)

    async def _read_all(self, sql: str, *params: Any) -> list[Any]:
        self._check_open()
        async with mapped_errors(self.server, "reading"):
            return list(await self._pool.fetch(sql, *params))


def affected(status: str) -> int:
    """Rows a statement changed, from its command tag (`UPDATE 3`, `INSERT 0 1`)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
