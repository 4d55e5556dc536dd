"""Embedded SQLite store (aiosqlite): one write connection fed by the writer, one for reads.

Never commits part of a batch, never lets a read see a write that has not committed, and
never lets two gateway processes use one file (an exclusive lock on `<file>.lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final, final

import aiosqlite

from gateway.errors import StoreUnavailable
from gateway.store import AttemptRow, RunRow, Write, filelock
from gateway.store.schema import UNFINISHED, migrate_sqlite
from gateway.store.sqlite_sql import (
    CLAIM,
    EXPIRED,
    NOT_MINE,
    PURGE,
    PURGEABLE,
    RUN_COLUMNS,
    group_writes,
    plan,
    run_row,
)

__all__ = ["MEMORY", "SqliteStore", "describe_error", "group_writes", "path_from_url"]

log = logging.getLogger(__name__)

MEMORY: Final = ":memory:"
_PREFIX: Final = "sqlite:///"


def path_from_url(url: str) -> str:
    """`sqlite:///rel/x.db` → `rel/x.db`; `sqlite:////abs/x.db` → `/abs/x.db`; `:memory:`."""
    if not url.startswith(_PREFIX) or len(url) == len(_PREFIX):
        raise ValueError(
            f"bad sqlite url {url!r}: expected sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    return url[len(_PREFIX) :]


# Primary result codes (the low byte of an extended code) worth a plain explanation.
_CAUSES: Final[dict[int, tuple[str, str]]] = {
    5: ("database is locked", "is locked by another connection (busy past busy_timeout)"),
    6: ("database table is locked", "is locked by another connection"),
    8: ("readonly database", "is read-only: check the permissions of the file and its directory"),
    10: ("disk i/o error", "hit a disk I/O error"),
    13: ("database or disk is full", "is full: the disk is out of space or the size cap was hit"),
    14: ("unable to open database", "cannot be opened: check the path and its permissions"),
}


def describe_error(exc: sqlite3.Error, path: str, doing: str) -> str:
    """A message an operator can act on: what failed, on which file, and the likely cause."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    for primary, (needle, cause) in _CAUSES.items():
        if (code is not None and code & 0xFF == primary) or needle in text.lower():
            return f"sqlite: {doing} failed: {path} {cause} ({text})"
    return f"sqlite: {doing} failed on {path}: {text}"


@contextlib.asynccontextmanager
async def _mapped_errors(path: str, doing: str) -> AsyncIterator[None]:
    """Turn database faults into StoreUnavailable, the one error callers handle."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(describe_error(exc, path, doing)) from exc


def _prepare_path(path: str) -> None:
    if path != MEMORY:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"sqlite: cannot create the directory of {path}: {exc}") from exc


async def _connect(path: str, busy_timeout_ms: int, *, read_only: bool) -> aiosqlite.Connection:
    # isolation_level=None: autocommit, so the only transactions are our explicit BEGINs.
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if read_only:
            await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


@final
class SqliteStore:
    """The Store Protocol on one SQLite file in WAL mode, used by one process at a time."""

    __slots__ = (
        "path",
        "exclusive",
        "_writer",
        "_reader",
        "_write_lock",
        "_read_guard",
        "_lock_fd",
        "_closed",
    )

    def __init__(
        self,
        path: str,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        lock_fd: int | None = None,
    ):
        self.path = path
        # The file lock keeps other gateways out; nothing else can see a :memory: one.
        self.exclusive = lock_fd is not None or path == MEMORY
        self._writer = writer
        self._reader = reader
        # Transactions on the write connection must not interleave: aiosqlite orders
        # calls, not transactions (apply, claims, purges and meta writes all BEGIN).
        self._write_lock = asyncio.Lock()
        # With one shared connection (:memory:), a read between a batch's statements
        # would see uncommitted rows; with two, WAL gives reads a committed snapshot.
        self._read_guard: contextlib.AbstractAsyncContextManager[Any] = (
            self._write_lock if reader is writer else contextlib.nullcontext()
        )
        self._lock_fd = lock_fd
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, *, busy_timeout_ms: int = 5000, max_page_count: int | None = None
    ) -> SqliteStore:
        """Open the file a `sqlite:///…` url names, creating, locking and migrating it.

        Raises StoreUnavailable when another process holds the file. `max_page_count`
        is a test fault point: it caps the file's size so writes fail as on a full disk.
        """
        path = path_from_url(url)
        _prepare_path(path)
        lock_fd = None if path == MEMORY else filelock.acquire(path)
        try:
            async with _mapped_errors(path, "opening"):
                writer = await _connect(path, busy_timeout_ms, read_only=False)
                try:
                    reader = await cls._set_up(path, writer, busy_timeout_ms, max_page_count)
                except BaseException:
                    await writer.close()
                    raise
        except BaseException:
            filelock.release(lock_fd)
            raise
        return cls(path, writer, reader, lock_fd)

    @staticmethod
    async def _set_up(
        path: str, writer: aiosqlite.Connection, busy_timeout_ms: int, max_page_count: int | None
    ) -> aiosqlite.Connection:
        """Pragmas and migrations on the write connection; returns the read connection."""
        async with writer.execute("PRAGMA journal_mode = WAL") as cur:
            mode = await cur.fetchone()
        if path != MEMORY and (mode is None or str(mode[0]).lower() != "wal"):
            log.warning("sqlite %s: WAL unavailable, journal_mode is %s", path, mode)
        # NORMAL with WAL syncs at checkpoints, not at every commit: a committed
        # transaction survives a process crash (kill -9), since it is in the WAL
        # file in the OS page cache; a power loss or OS crash may drop the last
        # commits, never corrupt the file. A `synchronous: full` option may come.
        await writer.execute("PRAGMA synchronous = NORMAL")
        # A burst can grow the WAL far past its usual size; cut it back after each
        # checkpoint, so the files on disk stay bounded under a steady load.
        await writer.execute("PRAGMA journal_size_limit = 67108864")
        # No foreign keys: the store never relies on cascades, and checks cost.
        await writer.execute("PRAGMA foreign_keys = OFF")
        applied = await migrate_sqlite(writer)
        if applied:
            log.info("sqlite %s: applied schema migrations %s", path, applied)
        if max_page_count is not None:
            log.warning("sqlite %s: test fault point: max_page_count = %d", path, max_page_count)
            await writer.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        if path == MEMORY:
            return writer
        return await _connect(path, busy_timeout_ms, read_only=True)

    async def set_max_page_count(self, pages: int) -> int:
        """Test fault point: cap (or lift the cap on) the file's size; returns the cap.

        SQLite never sets it below the pages already in use.
        """
        self._check_open()
        async with self._write_lock, _mapped_errors(self.path, "setting max_page_count"):
            async with self._writer.execute(f"PRAGMA max_page_count = {int(pages)}") as cur:
                row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    @contextlib.asynccontextmanager
    async def _transaction(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """One IMMEDIATE transaction on the write connection: all of it commits, or none.

        IMMEDIATE takes the write lock up front, so a busy database fails (after
        busy_timeout) before any statement runs, instead of on upgrade mid-way. After a
        failure the connection is rolled back and stays usable for the next try.
        """
        self._check_open()
        async with self._write_lock, _mapped_errors(self.path, doing):
            self._check_open()  # close() may have run while we waited for the lock
            conn = self._writer
            if conn.in_transaction:  # a rollback that itself failed left one open
                await conn.rollback()
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                # Queued behind the failed statement on the connection's thread, so it
                # runs after it even when we were cancelled; a no-op if SQLite already
                # rolled back (it does on SQLITE_FULL and some I/O errors).
                try:
                    await conn.rollback()
                except sqlite3.Error as exc:
                    log.warning(
                        "sqlite %s: rollback failed, retried before next use: %s", self.path, exc
                    )
                raise

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit all writes in one transaction; roll back and raise on failure."""
        if not writes:
            return
        self._check_open()
        statements = plan(writes)
        async with self._transaction(f"writing {len(writes)} writes") as conn:
            for sql, rows in statements:
                await conn.executemany(sql, rows)

    async def claim_unfinished(
        self, owner: str, now: float, lease_ttl: float, limit: int = 1000, *, steal: bool = False
    ) -> list[RunRow]:
        """See Store.claim_unfinished; read and lease in one transaction, so it is atomic."""
        until = now + lease_ttl
        params: tuple[Any, ...]
        if steal:
            sql, params = CLAIM.format(which=NOT_MINE), (now, owner, limit)
        else:
            sql, params = CLAIM.format(which=EXPIRED), (now, limit)
        async with self._transaction("claiming unfinished runs") as conn:
            async with conn.execute(sql, params) as cur:
                rows = [run_row(row) for row in await cur.fetchall()]
            await conn.executemany(
                "UPDATE runs SET owner = ?, lease_until = ? WHERE run_id = ?",
                [(owner, until, row.run_id) for row in rows],
            )
        return [dataclasses.replace(row, owner=owner, lease_until=until) for row in rows]

    async def renew_leases(self, owner: str, until: float) -> int:
        return await self._update_leases(
            f"UPDATE runs SET lease_until = ? WHERE owner = ? AND {UNFINISHED}",
            (until, owner),
            "renewing leases",
        )

    async def release_leases(self, owner: str) -> int:
        return await self._update_leases(
            f"UPDATE runs SET lease_until = NULL WHERE owner = ? AND {UNFINISHED}",
            (owner,),
            "releasing leases",
        )

    async def _update_leases(self, sql: str, params: tuple[Any, ...], doing: str) -> int:
        async with self._transaction(doing) as conn:
            async with conn.execute(sql, params) as cur:
                return cur.rowcount

    async def find_idempotency(self, route: str, key: str) -> tuple[str, str] | None:
        row = await self._read_one(
            "SELECT fingerprint, run_id FROM idempotency_keys WHERE route = ? AND idem_key = ?",
            route,
            key,
        )
        return None if row is None else (str(row[0]), str(row[1]))

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        """Delete up to `limit` runs finished before cutoff, and all that hangs off them.

        The ids are read inside the same transaction that deletes them, so every
        table loses exactly the same runs.
        """
        async with self._transaction("purging finished runs") as conn:
            async with conn.execute(PURGEABLE, (cutoff, limit)) as cur:
                ids = [(row[0],) for row in await cur.fetchall()]
            if ids:
                for sql in PURGE:
                    await conn.executemany(sql, ids)
        return len(ids)

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._read_one(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", run_id)
        return None if row is None else run_row(row)

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        rows = await self._read_all("SELECT step_id, output FROM steps WHERE run_id = ?", run_id)
        return {row[0]: bytes(row[1]) for row in rows}

    async def list_attempts(self, run_id: str) -> list[AttemptRow]:
        rows = await self._read_all(
            "SELECT attempt, started_at, ended_at, outcome, status, detail"
            " FROM attempts WHERE run_id = ? ORDER BY attempt",
            run_id,
        )
        return [AttemptRow(*row) for row in rows]

    async def get_meta(self, key: str) -> str | None:
        row = await self._read_one("SELECT value FROM meta WHERE key = ?", key)
        return None if row is None else str(row[0])

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Insert and read back in one transaction, so racing processes agree on one value."""
        async with self._transaction(f"setting meta {key!r}") as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        assert row is not None  # inserted or already there, inside the same transaction
        return str(row[0])

    async def close(self) -> None:
        """Close both connections and drop the file lock; later calls raise. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            async with self._write_lock:
                if self._reader is not self._writer:
                    await self._reader.close()
                await self._writer.close()
        finally:
            # Only once both connections are closed: the next holder may write at once.
            filelock.release(self._lock_fd)
            self._lock_fd = None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"sqlite store {self.path} is closed")

    async def _read_one(self, sql: str, *params: Any) -> Any:
        self._check_open()
        async with self._read_guard, _mapped_errors(self.path, "reading"):
            async with self._reader.execute(sql, params) as cur:
                return await cur.fetchone()

    async def _read_all(self, sql: str, *params: Any) -> list[Any]:
        self._check_open()
        async with self._read_guard, _mapped_errors(self.path, "reading"):
            async with self._reader.execute(sql, params) as cur:
                return list(await cur.fetchall())
