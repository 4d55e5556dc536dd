"""Embedded SQLite store (aiosqlite): one write connection fed by the writer, one for reads.

Never commits part of a batch, and never lets a read see a write that has not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final, final

import aiosqlite
import orjson

from gateway.errors import StoreUnavailable
from gateway.store import (
    AttemptRow,
    CreateRun,
    FinishRun,
    Headers,
    PutStep,
    RecordAttempt,
    RunRow,
    StoredRequest,
    StoredResponse,
    UpdateRun,
    Write,
)
from gateway.store.schema import migrate_sqlite

log = logging.getLogger(__name__)

MEMORY: Final = ":memory:"
_PREFIX: Final = "sqlite:///"

# One statement per kind of write. Parameters come from `_row` in the same order.
_SQL: Final[dict[type[Any], str]] = {
    CreateRun: (
        "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at,"
        " method, path_qs, req_headers, req_body) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id) DO NOTHING"
    ),
    PutStep: (
        "INSERT INTO steps (run_id, step_id, output, attempt, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO NOTHING"
    ),
    RecordAttempt: (
        "INSERT INTO attempts (run_id, attempt, started_at, ended_at, outcome, status, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, attempt) DO UPDATE SET"
        " started_at = excluded.started_at, ended_at = excluded.ended_at,"
        " outcome = excluded.outcome, status = excluded.status, detail = excluded.detail"
    ),
    UpdateRun: (
        "UPDATE runs SET status = ?, attempt = ?, wake_at = ?, updated_at = ? WHERE run_id = ?"
    ),
    FinishRun: (
        "UPDATE runs SET status = ?, resp_status = ?, resp_headers = ?, resp_body = ?,"
        " finished_at = ?, updated_at = ?, wake_at = NULL WHERE run_id = ?"
    ),
}

# The table each kind writes; writes to different tables or runs never depend on each other.
_TABLE: Final[dict[type[Any], str]] = {
    CreateRun: "runs",
    UpdateRun: "runs",
    FinishRun: "runs",
    PutStep: "steps",
    RecordAttempt: "attempts",
}

_RUN_COLUMNS: Final = (
    "run_id, route, status, attempt, created_at, updated_at, finished_at, wake_at,"
    " method, path_qs, req_headers, req_body, resp_status, resp_headers, resp_body"
)


def path_from_url(url: str) -> str:
    """`sqlite:///rel/x.db` → `rel/x.db`; `sqlite:////abs/x.db` → `/abs/x.db`; `:memory:`."""
    if not url.startswith(_PREFIX) or len(url) == len(_PREFIX):
        raise ValueError(
            f"bad sqlite url {url!r}: expected sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    return url[len(_PREFIX) :]


def group_writes(writes: Sequence[Write]) -> list[list[Write]]:
    """Pack a batch into as few same-kind groups as order allows, one executemany each.

    Only writes to the same (table, run) must keep their order: every statement touches
    rows of its own run in its own table, and the whole batch is one transaction. So a
    write joins the first group of its kind at or after the group holding its
    predecessor on that (table, run), and a group keeps submission order inside it.
    A mixed batch of many runs thus costs about one statement per kind, not per write.
    """
    groups: list[list[Write]] = []
    kinds: list[type[Any]] = []
    last: dict[tuple[str, str], int] = {}
    for write in writes:
        kind = type(write)
        key = (_TABLE[kind], write.run_id)
        index = last.get(key, 0)
        while index < len(groups) and kinds[index] is not kind:
            index += 1
        if index == len(groups):
            groups.append([])
            kinds.append(kind)
        groups[index].append(write)
        last[key] = index
    return groups


def encode_headers(headers: Headers) -> bytes:
    """Header pairs as a JSON array; lossless for aiohttp's surrogate-escaped bytes."""
    try:
        return orjson.dumps(headers)
    except TypeError:
        # orjson refuses lone surrogates (non-UTF-8 header bytes as aiohttp decodes
        # them); the json module escapes them as \udcXX and reads them back intact.
        return json.dumps(headers).encode()


def decode_headers(raw: bytes) -> Headers:
    try:
        pairs = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pairs = json.loads(raw)
    return [(str(name), str(value)) for name, value in pairs]


def _row(write: Write) -> tuple[Any, ...]:
    """Statement parameters for one write, in `_SQL` order."""
    match write:
        case PutStep():
            return (write.run_id, write.step_id, write.output, write.attempt, write.created_at)
        case CreateRun(request=req):
            return (
                write.run_id,
                write.route,
                write.status,
                write.created_at,
                write.created_at,
                req.method,
                req.path_qs,
                encode_headers(req.headers),
                req.body,
            )
        case RecordAttempt():
            return (
                write.run_id,
                write.attempt,
                write.started_at,
                write.ended_at,
                write.outcome,
                write.status,
                write.detail,
            )
        case UpdateRun():
            return (write.status, write.attempt, write.wake_at, write.updated_at, write.run_id)
        case FinishRun(response=resp):
            return (
                write.status,
                resp.status,
                encode_headers(resp.headers),
                resp.body,
                write.finished_at,
                write.finished_at,
                write.run_id,
            )


def _run_row(row: Any) -> RunRow:
    response = None
    if row[12] is not None:
        response = StoredResponse(row[12], decode_headers(row[13]), bytes(row[14]))
    return RunRow(
        run_id=row[0],
        route=row[1],
        status=row[2],
        attempt=row[3],
        created_at=row[4],
        updated_at=row[5],
        finished_at=row[6],
        wake_at=row[7],
        request=StoredRequest(row[8], row[9], decode_headers(row[10]), bytes(row[11])),
        response=response,
    )


@contextlib.asynccontextmanager
async def _mapped_errors(doing: str) -> AsyncIterator[None]:
    """Turn database faults into StoreUnavailable, the one error callers handle."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"sqlite: {doing} failed: {exc}") from exc


def _prepare_path(path: str) -> None:
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


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
    """The Store Protocol on one SQLite file in WAL mode."""

    __slots__ = ("path", "_writer", "_reader", "_write_lock", "_read_guard", "_closed")

    def __init__(self, path: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        # Transactions on the write connection must not interleave: aiosqlite orders
        # calls, not transactions (apply and set_meta_if_absent both BEGIN).
        self._write_lock = asyncio.Lock()
        # With one shared connection (:memory:), a read between a batch's statements
        # would see uncommitted rows; with two, WAL gives reads a committed snapshot.
        self._read_guard: contextlib.AbstractAsyncContextManager[Any] = (
            self._write_lock if reader is writer else contextlib.nullcontext()
        )
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, busy_timeout_ms: int = 5000) -> SqliteStore:
        """Open the file a `sqlite:///…` url names, creating it and migrating it."""
        path = path_from_url(url)
        _prepare_path(path)
        async with _mapped_errors(f"opening {path}"):
            writer = await _connect(path, busy_timeout_ms, read_only=False)
            try:
                async with writer.execute("PRAGMA journal_mode = WAL") as cur:
                    mode = await cur.fetchone()
                if path != MEMORY and (mode is None or str(mode[0]).lower() != "wal"):
                    log.warning("sqlite %s: WAL unavailable, journal_mode is %s", path, mode)
                # NORMAL with WAL syncs at checkpoints, not at every commit: a committed
                # transaction survives a process crash (kill -9), since it is in the WAL
                # file in the OS page cache; a power loss or OS crash may drop the last
                # commits, never corrupt the file. A `synchronous: full` option may come.
                await writer.execute("PRAGMA synchronous = NORMAL")
                # No foreign keys: the store never relies on cascades, and checks cost.
                await writer.execute("PRAGMA foreign_keys = OFF")
                applied = await migrate_sqlite(writer)
                if applied:
                    log.info("sqlite %s: applied schema migrations %s", path, applied)
                reader = writer
                if path != MEMORY:
                    reader = await _connect(path, busy_timeout_ms, read_only=True)
            except BaseException:
                await writer.close()
                raise
        return cls(path, writer, reader)

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit all writes in one IMMEDIATE transaction; roll back and raise on failure.

        IMMEDIATE takes the write lock up front, so a busy database fails (after
        busy_timeout) before any statement runs instead of on upgrade mid-batch.
        """
        if not writes:
            return
        self._check_open()
        plan = [(_SQL[type(group[0])], [_row(w) for w in group]) for group in group_writes(writes)]
        async with self._write_lock, _mapped_errors(f"writing {len(writes)} writes"):
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in plan:
                    await self._writer.executemany(sql, rows)
                await self._writer.execute("COMMIT")
            except BaseException:
                # Queued behind the failed statement on the connection's thread, so it
                # runs after it even when we were cancelled; a no-op without a transaction.
                await self._writer.rollback()
                raise

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._read_one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", run_id)
        return None if row is None else _run_row(row)

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
        self._check_open()
        async with self._write_lock, _mapped_errors(f"setting meta {key!r}"):
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                await self._writer.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
                async with self._writer.execute(
                    "SELECT value FROM meta WHERE key = ?", (key,)
                ) as cur:
                    row = await cur.fetchone()
                await self._writer.execute("COMMIT")
            except BaseException:
                await self._writer.rollback()
                raise
        assert row is not None  # inserted or already there, inside the same transaction
        return str(row[0])

    async def close(self) -> None:
        """Close both connections; later calls raise StoreUnavailable. Idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            if self._reader is not self._writer:
                await self._reader.close()
            await self._writer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"sqlite store {self.path} is closed")

    async def _read_one(self, sql: str, *params: Any) -> Any:
        self._check_open()
        async with self._read_guard, _mapped_errors("reading"):
            async with self._reader.execute(sql, params) as cur:
                return await cur.fetchone()

    async def _read_all(self, sql: str, *params: Any) -> list[Any]:
        self._check_open()
        async with self._read_guard, _mapped_errors("reading"):
            async with self._reader.execute(sql, params) as cur:
                return list(await cur.fetchall())
