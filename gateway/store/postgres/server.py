"""Where a PostgreSQL store is and what its errors mean: the server's name for messages
(never the password), the classification of asyncpg's errors into the store's, and the
one context manager that maps them. Shared by the pool (`connection`) and the node's own
presence connection (`cluster`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Self
from urllib.parse import unquote, urlsplit

import asyncpg

from gateway.errors import GatewayError, StoreMisconfigured, StoreRejected, StoreUnavailable


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


_MISCONFIGURED: Final = frozenset({"28P01", "28000", "3D000", "42501"})
"""A wrong password, a refused user, no such database, no permission: waiting will not
help, so a starting gateway exits at once (StoreMisconfigured)."""


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
        if str(getattr(exc, "sqlstate", "")) in _MISCONFIGURED:
            kind = StoreMisconfigured
        if kind is StoreRejected and not refusals:
            kind = StoreUnavailable
        raise kind(describe_error(exc, server, doing)) from exc
