"""Schema version 3 (pending sleeps and waits, events, the wake and listing indexes) on
SQLite: a version 2 file, with runs in it, migrates in place and keeps working.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from gateway.store import (
    KeyRow,
    PendingRow,
    PutPending,
    SuspendRun,
    schema,
)
from gateway.store.open import open_store
from tests.store.records import ids

V2_RUN = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, method, path_qs,"
    " req_headers, req_body, owner, lease_until) VALUES (?, ?, ?, 2, ?, ?, 'POST', '/x',"
    " '[[\"A\",\"b\"]]', X'00ff', ?, ?)"
)


def make_v2_file(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(schema.SQLITE_META)
        for migration in schema.MIGRATIONS[:2]:
            assert migration.version <= 2
            for statement in migration.sqlite:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2'), ('secret', 'old')")
        runs = [
            ("live", "chat", "running", 100.0, 101.0, "dead-node", 130.0),
            ("backoff", "chat", "backoff", 110.0, 111.0, None, None),
            ("paused", "orders", "paused", 120.0, 121.0, "dead-node", 150.0),
            ("done", "orders", "succeeded", 90.0, 95.0, None, None),
        ]
        for run in runs:
            conn.execute(V2_RUN, run)
        conn.execute(
            "UPDATE runs SET resp_status = 200, resp_headers = '[]', resp_body = X'6f6b',"
            " finished_at = 95.0 WHERE run_id = 'done'"
        )
        conn.execute("INSERT INTO steps VALUES ('live', 's1', X'7b7d', 1, 105.0)")
        conn.execute(
            "INSERT INTO idempotency_keys VALUES ('chat', 'k', 'fp', 'live', 100.0)",
        )


def index_names(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {str(name) for (name,) in rows}


async def test_sqlite_a_v2_database_migrates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    make_v2_file(path)
    assert "runs_unfinished_lease" in index_names(path)

    store = await open_store("sqlite:///" + str(path))
    try:
        assert await store.get_meta("schema_version") == str(schema.LATEST)
        assert await store.get_meta("secret") == "old"
        live = await store.get_run("live")
        assert live is not None
        assert (live.status, live.attempt, live.owner, live.lease_until) == (
            "running",
            2,
            "dead-node",
            130.0,
        )
        assert await store.load_steps("live") == {"s1": b"{}"}
        assert await store.find_idempotency("chat", "k") == KeyRow("fp", "live")

        # The old runs list newest first, with their response status.
        runs, cursor = await store.list_runs(None, None, 10, None)
        assert [(r.run_id, r.response_status) for r in runs] == [
            ("paused", None),
            ("backoff", None),
            ("live", None),
            ("done", 200),
        ]
        assert cursor is None
        assert [s.step_id for s in await store.list_steps("live")] == ["s1"]

        # Active runs are claimed as before; the paused one waits for an operator.
        claimed = await store.claim_unfinished("me", 200.0, 30.0)
        assert sorted(r.run_id for r in claimed) == ["backoff", "live"]

        # The new tables work.
        await store.apply(
            [
                PutPending("backoff", "nap", "sleep", 300.0, None, None, 201.0),
                SuspendRun("backoff", 3, 300.0, 201.0),
            ]
        )
        assert await store.list_pending("backoff") == [
            PendingRow("backoff", "nap", "sleep", 300.0, None, None, 201.0)
        ]
        assert await store.next_wake_at() == 300.0
        assert ids(await store.claim_due("me", 300.0, 30.0)) == ["backoff"]
        assert (await store.add_event("e1", "payment", b"{}", 200.0)).new
        assert await store.purge_before(1000.0) == 1  # "done" and the event
    finally:
        await store.close()

    indexes = index_names(path)
    assert {"runs_unfinished_lease", "runs_status_wake", "runs_route_created"}.isdisjoint(indexes)
    assert {
        "runs_active_lease",
        "runs_suspended_wake",
        "runs_list",
        "runs_list_route",
        "runs_list_status",
        "events_name_ts",
        "events_ts",
    } <= indexes
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
