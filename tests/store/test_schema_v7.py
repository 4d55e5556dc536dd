"""Schema version 7 (step timing, what a run is suspended on) on both dialects: a
version 6 database with runs and steps migrates in place, its rows read back with no
timing and no suspension, and new writes store both."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import asyncpg

from gateway.store import PutStep, StepRow, SuspendRun, schema
from tests.store.conftest import Database, PostgresDatabase, SqliteDatabase
from tests.store.records import create

V6_RUN = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, wake_at,"
    " method, path_qs, req_headers, req_body) VALUES (?, 'chat', ?, 1, 100.0, 101.0, ?,"
    " 'POST', '/x', ?, ?)"
)
V6_STEP = "INSERT INTO steps VALUES (?, ?, ?, 1, ?)"
V6_ROWS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (V6_RUN, ("live", "running", None, b"[]", b"{}")),
    (V6_RUN, ("parked", "suspended", 150.0, b'[["Traceparent","x"]]', b"{}")),
    (V6_STEP, ("live", "s1", b"1", 100.5)),
)


def _postgres(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1`, `$2`, …"""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


async def make_v6(database: Database, rows: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """Apply migrations 1-6 to an empty database, as a version 6 gateway left it, and
    insert `rows` through a connection of its own."""
    migrations = [m for m in schema.MIGRATIONS if m.version <= 6]
    assert [m.version for m in migrations] == [1, 2, 3, 4, 5, 6]
    if isinstance(database, SqliteDatabase):
        database.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(database.path, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(schema.SQLITE_META)
            for statement in (s for m in migrations for s in m.sqlite):
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', '6')")
            for sql, args in rows:
                conn.execute(sql, args)
        return
    assert isinstance(database, PostgresDatabase)
    pg = await asyncpg.connect(database.url)
    try:
        async with pg.transaction():
            await pg.execute(schema.POSTGRES_META)
            for statement in (s for m in migrations for s in m.postgres):
                await pg.execute(statement)
            await pg.execute("INSERT INTO meta VALUES ('schema_version', '6')")
            for sql, args in rows:
                await pg.execute(_postgres(sql), *args)
    finally:
        await pg.close()


async def test_a_v6_database_migrates_and_keeps_its_rows(database: Database) -> None:
    await make_v6(database, V6_ROWS)

    store = await database.open()
    try:
        assert await store.get_meta("schema_version") == str(schema.LATEST)
        live = await store.get_run("live")
        parked = await store.get_run("parked")
        assert live is not None and (live.status, live.suspended_on) == ("running", None)
        assert parked is not None and (parked.status, parked.wake_at) == ("suspended", 150.0)
        assert parked.suspended_on is None
        assert parked.request.headers == [("Traceparent", "x")]
        assert await store.load_steps("live") == {"s1": b"1"}
        assert await store.list_steps("live") == [StepRow("s1", 1, 100.5, 1, None, None)]

        # Runs from before the upgrade take the new fields.
        await store.apply(
            [
                PutStep("live", "s2", b"2", 1, 102.0, started_at=101.5, duration_ms=12.5),
                SuspendRun("live", 1, 300.0, 103.0, "sleep:nap"),
                create("new"),
            ]
        )
        assert (await store.list_steps("live"))[1] == StepRow("s2", 1, 102.0, 1, 101.5, 12.5)
        live = await store.get_run("live")
        assert live is not None and live.suspended_on == "sleep:nap"
    finally:
        await store.close()
    assert await database.count("runs") == 3
    assert await database.count("steps") == 2
