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
from dataclasses import dataclass
from typing import Any, Final, Self
from urllib.parse import unquote, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import GatewayError, StoreRejected, StoreUnavailable
from gateway.store.postgres.migrate import migrate_postgres
from gateway.store.records import RunRow
from gateway.store.rows import run_row

log = logging.getLogger("gateway.store.postgres")

Connection = asyncpg.Connection | PoolConnectionProxy
DEFAULT_LOCK_WAIT: Final = 5.0
"""Seconds a statement waits on a row or table lock before it fails as unavailable (and
the writer retries): SQLite's busy_timeout, in PostgreSQL's `lock_timeout`."""
CLOSE_WAIT: Final = 10.0


@dataclass(frozen=True, slots=True)
class Server:
    """Where a DSN points, for messages: never the password."""

    user: str
    host: str
    port: int
    database: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"

    @classmethod
    def of(cls, dsn: str) -> Self:
        """Read a `postgresql://` or `postgres://` URL; ValueError for another (or none)."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("a PostgreSQL store needs a postgresql:// or postgres:// URL")
        try:
            port = parts.port or 5432
        except ValueError:
            raise ValueError("the port of the postgresql:// URL is not a number") from None
        user = unquote(parts.username or "") or "postgres"
        database = unquote(parts.path.lstrip("/")) or user
        return cls(user, parts.hostname or "localhost", port, database)


# SQLSTATE classes and codes, by what retrying does to them. Every other server error
# is a fault too (StoreUnavailable): the writer retries, an operator sees it in the log.
_REFUSED_CLASSES: Final = ("22", "23")
"""Data exceptions (a value out of range, too long, a NUL in text) and constraint
violations: the same write fails the same way however often it is tried."""
_REFUSED_CODES: Final = frozenset({"54000"})
"""program_limit_exceeded: say, a value over an index row's size limit."""


def classify(exc: BaseException) -> type[GatewayError] | None:
    """StoreRejected for a write refused for good, StoreUnavailable for a fault worth
    retrying (connection refused or lost, shutdown, too many connections, lock or
    statement timeouts, deadlocks, authentication), None for what is no database error.
    """
    if isinstance(exc, asyncpg.exceptions._base.DataError):
        return StoreRejected  # the client could not encode a parameter: a bad value
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state[:2] in _REFUSED_CLASSES or state in _REFUSED_CODES:
            return StoreRejected
        return StoreUnavailable
    if isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError):
        return StoreUnavailable  # closed connection, refused, unreachable, connect timeout
    return None


_CAUSES: Final[dict[str, str]] = {
    "28P01": "check the user and password in storage.url",
    "28000": "the server refuses this user: check pg_hba.conf and the user in storage.url",
    "3D000": "the database does not exist: create it (the gateway creates only its tables)",
    "53300": "the server has no free connection: lower storage.pool or raise max_connections",
    "57P01": "the server is shutting down",
    "57P02": "the server crashed",
    "57P03": "the server is starting up or shutting down",
    "55P03": "a table or row is locked by another session (waited past lock_timeout)",
    "57014": "a statement ran past its timeout or was cancelled",
    "40P01": "a deadlock with another session (retried)",
    "25006": "the server is read-only (a standby?)",
}


def describe_error(exc: BaseException, server: Server, doing: str) -> str:
    """A message an operator can act on: the cause, what was being done, and where."""
    where = f"({doing}, {server})"
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "28P01":
        return (
            f'postgresql: authentication failed for user "{server.user}" {where}: {_CAUSES[state]}'
        )
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return f"postgresql: connection refused {where}: is the server running and reachable?"
    if isinstance(exc, OSError | TimeoutError) and not isinstance(exc, ConnectionError):
        text = str(exc) or type(exc).__name__
        return f"postgresql: cannot reach the server {where}: {text}"
    text = str(exc).strip() or type(exc).__name__
    if state in _CAUSES:
        return f"postgresql: {text} {where}: {_CAUSES[state]}"
    return f"postgresql: {text} {where}"


@contextlib.asynccontextmanager
async def mapped_errors(
    server: Server, doing: str, *, refusals: bool = False
) -> AsyncIterator[None]:
    """Turn database faults into StoreUnavailable, the one error callers handle; with
    `refusals`, a write refused for good into StoreRejected (see `classify`)."""
    try:
        yield
    except Exception as exc:
        kind = classify(exc)
        if kind is None:
            raise
        if kind is StoreRejected and not refusals:
            kind = StoreUnavailable
        raise kind(describe_error(exc, server, doing)) from exc


class PostgresConnections:
    """A pool of connections to one PostgreSQL database that other gateway nodes share.
    The store classes build on it."""

    __slots__ = ("server", "_pool", "_closed")

    exclusive = False
    """Other nodes use the same database: a live-looking lease may be theirs."""

    def __init__(self, server: Server, pool: asyncpg.Pool) -> None:
        self.server = server
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
            # min_size 1: a node opens the rest as load asks for them.
            connections = await asyncpg.create_pool(
                dsn, min_size=1, max_size=pool, server_settings=settings
            )
            try:
                async with connections.acquire() as conn:
                    applied = await migrate_postgres(conn)
            except BaseException:
                await connections.close()
                raise
        if applied:
            log.info("postgresql %s: applied schema migrations %s", server, applied)
        return cls(server, connections)

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
