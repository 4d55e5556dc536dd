"""SQLite plumbing under the store: opening, pragmas, migrations, one IMMEDIATE write
transaction at a time, reads from a committed snapshot, error mapping, closing.

Holds no domain SQL (the store's modules do, and hand their claims to `_claim`); never
lets a read see an uncommitted write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, Self

import aiosqlite

from gateway.config.storage_url import MEMORY, SqliteUrl, parse_storage_url
from gateway.errors import StoreRejected, StoreUnavailable
from gateway.store.records import RunRow
from gateway.store.rows import run_row
from gateway.store.sqlite import filelock, modes
from gateway.store.sqlite.migrate import migrate_sqlite
from gateway.store.sqlite.sql import claim_updates

log = logging.getLogger("gateway.store.sqlite")


def path_from_url(url: str) -> str:
    """`sqlite:///rel/x.db` → `rel/x.db`; `sqlite:////abs/x.db` → `/abs/x.db`; `:memory:`.

    The config loader's parser (`storage_url`), so a URL that passes `check` opens here.
    """
    parsed = parse_storage_url(url)
    if not isinstance(parsed, SqliteUrl):
        raise ValueError("not an sqlite:/// URL")
    return parsed.path


# Primary result codes (the low byte of an extended code) worth a plain explanation.
_CAUSES: Final[dict[int, tuple[str, str]]] = {
    5: ("database is locked", "is locked by another connection (busy past busy_timeout)"),
    6: ("database table is locked", "is locked by another connection"),
    8: ("readonly database", "is read-only: check the permissions of the file and its directory"),
    10: ("disk i/o error", "hit a disk I/O error"),
    13: ("database or disk is full", "is full: the disk is out of space or the size cap was hit"),
    14: ("unable to open database", "cannot be opened: check the path and its permissions"),
    18: ("string or blob too big", "refused a value over its length limit (SQLITE_LIMIT_LENGTH)"),
    19: ("constraint failed", "refused a write that breaks a constraint"),
}

# SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE: the same write fails
# the same way however often it is tried.
_REFUSALS: Final = frozenset({18, 19, 20, 25})


def refused_for_good(exc: BaseException) -> bool:
    """True when retrying the write cannot help: a value too big, a broken constraint, or
    a parameter the driver cannot bind (which Python raises before SQLite sees it)."""
    if isinstance(exc, sqlite3.DataError | sqlite3.IntegrityError | sqlite3.InterfaceError):
        return True
    if isinstance(exc, OverflowError | TypeError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _REFUSALS:
        return True
    text = str(exc).lower()
    if isinstance(exc, sqlite3.ProgrammingError) and "binding" in text:
        return True  # "Error binding parameter 3: type 'dict' is not supported"
    return "string or blob too big" in text


def describe_error(exc: Exception, path: str, doing: str) -> str:
    """A message an operator can act on: what failed, on which file, and the likely cause."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    for primary, (needle, cause) in _CAUSES.items():
        if (code is not None and code & 0xFF == primary) or needle in text.lower():
            return f"sqlite: {doing} failed: {path} {cause} ({text})"
    return f"sqlite: {doing} failed on {path}: {text}"


@contextlib.asynccontextmanager
async def _mapped_errors(path: str, doing: str, *, refusals: bool = False) -> AsyncIterator[None]:
    """Turn database faults into StoreUnavailable, the one error callers handle; with
    `refusals`, a write refused for good into StoreRejected (see `refused_for_good`)."""
    try:
        yield
    except (sqlite3.Error, OverflowError, TypeError) as exc:
        if refusals and refused_for_good(exc):
            raise StoreRejected(describe_error(exc, path, doing)) from exc
        if not isinstance(exc, sqlite3.Error):
            raise
        raise StoreUnavailable(describe_error(exc, path, doing)) from exc


def _prepare_path(path: str) -> None:
    if path != MEMORY:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"sqlite: cannot create the directory of {path}: {exc}") from exc


def _limited(max_length: int) -> type[sqlite3.Connection]:
    """A connection class whose SQLITE_LIMIT_LENGTH is `max_length` bytes (a test fault
    point); set as it opens, on the thread aiosqlite runs it on."""

    class Limited(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_length)

    return Limited


async def _connect(
    path: str, busy_timeout_ms: int, *, read_only: bool, max_length: int | None = None
) -> aiosqlite.Connection:
    # isolation_level=None: autocommit, so the only transactions are our explicit BEGINs.
    if max_length is None:
        conn = await aiosqlite.connect(path, isolation_level=None)
    else:
        log.warning("sqlite %s: test fault point: SQLITE_LIMIT_LENGTH = %d", path, max_length)
        conn = await aiosqlite.connect(path, isolation_level=None, factory=_limited(max_length))
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if read_only:
            await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


class SqliteConnections:
    """Two connections to one SQLite file in WAL mode: `_writer` for transactions (one
    at a time), `_reader` for reads. The store classes build on it."""

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
        cls,
        url: str,
        *,
        busy_timeout_ms: int = 5000,
        max_page_count: int | None = None,
        max_length: int | None = None,
    ) -> Self:
        """Open the file a `sqlite:///…` url names, creating, locking and migrating it.

        Raises StoreUnavailable when another process holds the file. Two test fault
        points: `max_page_count` caps the file's size so writes fail as on a full disk;
        `max_length` lowers the write connection's largest value (or row), in bytes, so
        a write of a bigger one is refused for good ("string or blob too big").
        """
        path = path_from_url(url)
        _prepare_path(path)
        lock_fd = None if path == MEMORY else filelock.acquire(path)
        try:
            if path != MEMORY:
                modes.make_private(path)
            async with _mapped_errors(path, "opening"):
                writer = await _connect(
                    path, busy_timeout_ms, read_only=False, max_length=max_length
                )
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
        # Checkpoint (and sync) every 32 MiB of WAL rather than SQLite's 4 MB: a streamed
        # response is written at several times the speed, since each checkpoint's sync
        # is what a write waits on (measured: 64 KiB rows, 181 against 240 MiB/s).
        await writer.execute("PRAGMA wal_autocheckpoint = 8192")
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
    async def _transaction(
        self, doing: str, *, refusals: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """One IMMEDIATE transaction on the write connection: all of it commits, or none.

        IMMEDIATE takes the write lock up front, so a busy database fails (after
        busy_timeout) before any statement runs, instead of on upgrade mid-way. After a
        failure the connection is rolled back and stays usable for the next try.
        With `refusals`, a write refused for good raises StoreRejected (only the writer's
        `apply` asks: it isolates the write; other callers' loops retry as for a fault).
        """
        self._check_open()
        async with self._write_lock, _mapped_errors(self.path, doing, refusals=refusals):
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

    async def _claim(
        self, doing: str, select: str, params: tuple[Any, ...], assign: str, values: tuple[Any, ...]
    ) -> list[RunRow]:
        """Read the runs `select` picks and set `assign` (with `values`) on all of them in
        one transaction, so two claimers never take the same run. Returns the rows as read.
        """
        async with self._transaction(doing) as conn:
            async with conn.execute(select, params) as cur:
                rows = [run_row(row) for row in await cur.fetchall()]
            for sql, args in claim_updates(assign, values, [row.run_id for row in rows]):
                await conn.execute(sql, args)
        return rows

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
