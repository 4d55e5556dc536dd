"""Schema version 4 (event waits indexed by their match) on SQLite: a version 3 file
with pending waits migrates in place, and every old wait is still found by its events.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from gateway.store import PutPending, SuspendRun, schema
from gateway.store.open import open_store
from tests.store.records import create

V3_RUN = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, method, path_qs,"
    " req_headers, req_body) VALUES (?, 'orders', 'suspended', 1, 100.0, 101.0, 'POST', '/x',"
    " '[]', X'')"
)
V3_WAIT = "INSERT INTO pending VALUES (?, ?, 'wait', NULL, ?, ?, 110.0)"
# As version 3 stored them: orjson with sorted keys, numbers as the backend wrote them.
WAITS = [
    ("plain", "payment", b'{"data.order_id":"42"}'),
    ("any", "payment", None),
    ("empty", "payment", b"{}"),
    ("real", "payment", b'{"data.n":1.0}'),
    ("nested-real", "payment", b'{"data.v":{"a":[2.5]}}'),
    ("two", "payment", b'{"data.a":"x","data.order_id":"42"}'),
    ("elsewhere", "shipment", b'{"data.order_id":"42"}'),
]


def make_v3_file(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(schema.SQLITE_META)
        for migration in schema.MIGRATIONS[:3]:
            assert migration.version <= 3
            for statement in migration.sqlite:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        for run_id, event, match in WAITS:
            conn.execute(V3_RUN, (run_id,))
            conn.execute(V3_WAIT, (run_id, "w", event, match))
        conn.execute(V3_RUN, ("sleeper",))
        conn.execute("INSERT INTO pending VALUES ('sleeper', 'nap', 'sleep', 500.0, NULL, NULL, 1)")


async def test_sqlite_a_v3_database_migrates_and_its_waits_still_match(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    make_v3_file(path)

    store = await open_store("sqlite:///" + str(path))
    try:
        assert int(await store.get_meta("schema_version") or 0) >= 4
        with closing(sqlite3.connect(path)) as conn:
            columns = dict(conn.execute("SELECT run_id, paths FROM pending").fetchall())
        assert columns == {
            "plain": '["data.order_id"]',
            "any": "[]",
            "empty": "[]",
            "real": None,  # maybe not canonical (1.0): matched one by one
            "nested-real": None,
            "two": '["data.a","data.order_id"]',
            "elsewhere": '["data.order_id"]',
            "sleeper": None,
        }

        async def woken(event_id: str, data: bytes) -> list[str]:
            added = await store.add_event(event_id, "payment", data, 200.0)
            return sorted(w.run_id for w in added.completed)

        assert await woken("e1", b'{"order_id":"41","n":2}') == ["any", "empty"]
        assert await woken("e2", b'{"n":1}') == ["real"]
        assert await woken("e3", b'{"order_id":"42","v":{"a":[2.5]}}') == ["nested-real", "plain"]
        assert await woken("e4", b'{"order_id":"42","a":"x"}') == ["two"]
        assert len(await store.list_pending("elsewhere")) == 1

        # New waits go in with their paths and canonical match.
        await store.apply(
            [
                create("new"),
                PutPending("new", "w", "wait", None, "payment", b'{"data.n":3.0}', 300.0),
                SuspendRun("new", 1, None, 301.0),
            ]
        )
        (pending,) = await store.list_pending("new")
        assert pending.match == b'{"data.n":3}'
        assert await woken("e5", b'{"n":3}') == ["new"]
    finally:
        await store.close()

    with closing(sqlite3.connect(path)) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "pending_match" in indexes and "pending_wait" not in indexes
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
