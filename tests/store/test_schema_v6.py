"""Schema version 6 (streamed response bodies) on SQLite: a version 5 file with runs
migrates in place, its inline results read back unchanged, and new runs stream bodies.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from gateway.store import AppendBody, BeginBody, BodyRow, FinishRun, StoredResponse, schema
from gateway.store.open import open_store
from tests.store.records import create

V5_RUN = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, finished_at,"
    " method, path_qs, req_headers, req_body, resp_status, resp_headers, resp_body)"
    " VALUES (?, 'chat', ?, 1, 100.0, 101.0, ?, 'POST', '/x', '[]', X'7B7D', ?, ?, ?)"
)


def make_v5_file(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(schema.SQLITE_META)
        for migration in schema.MIGRATIONS[:5]:
            assert migration.version <= 5
            for statement in migration.sqlite:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '5')")
        conn.execute(
            V5_RUN, ("done", "succeeded", 101.0, 200, b'[["Content-Type","text/plain"]]', b"hi")
        )
        conn.execute(V5_RUN, ("live", "running", None, None, None, None))
        conn.execute("INSERT INTO steps VALUES ('live', 's1', X'31', 1, 100.5)")


async def test_sqlite_a_v5_database_migrates_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    make_v5_file(path)

    store = await open_store("sqlite:///" + str(path))
    try:
        assert int(await store.get_meta("schema_version") or 0) >= 6
        done = await store.get_run("done")
        assert done is not None and done.status == "succeeded"
        assert done.response == StoredResponse(200, [("Content-Type", "text/plain")], b"hi")
        assert done.response.kept is None  # inline, as version 5 stored it
        live = await store.get_run("live")
        assert live is not None and live.response is None
        assert await store.load_steps("live") == {"s1": b"1"}
        assert await store.get_body("live") is None

        # The run from before the upgrade streams its result now.
        await store.apply(
            [
                BeginBody("live", 1, 1, 200, [], 0),
                AppendBody("live", 0, b"streamed"),
                FinishRun("live", "succeeded", StoredResponse(200, [], b"", 8), 102.0),
                create("new"),
            ]
        )
        assert await store.get_body("live") == BodyRow(1, 1, 200, [], 8)
        assert await store.read_body("live", 0, 100) == b"streamed"
        live = await store.get_run("live")
        assert live is not None and live.response == StoredResponse(200, [], b"", 8)
    finally:
        await store.close()

    with closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"bodies", "body_chunks"} <= tables
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (3,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
