"""Admin reads: runs listed a page at a time, a run's steps with sizes; and (SQLite) the
query plans that keep every store read on its index, whatever the number of runs.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.store import (
    FinishRun,
    FullStore,
    PutStep,
    RunSummary,
    StepRow,
    StoredResponse,
    SuspendRun,
    Write,
)
from gateway.store.open import open_store
from gateway.store.rows import decode_cursor, encode_cursor, list_runs_query
from gateway.store.sqlite import sql as sqlite_sql
from gateway.store.sqlite import suspensions as sqlite_suspensions
from tests.store.records import REQUEST, create, ids

ORDER = dataclasses.replace(REQUEST, path_qs="/orders?q=1")


async def page_through(
    store: FullStore, route: str | None, status: str | None, limit: int
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        runs, cursor = await store.list_runs(route, status, limit, cursor)
        pages.append([run.run_id for run in runs])
        if cursor is None:
            return pages
        assert len(pages) < 100, "paging does not terminate"


async def test_list_runs_summarises_runs_newest_first(store: FullStore) -> None:
    big = b"x" * 300_000
    await store.apply(
        [
            create("old", 100.0, body=big),
            create("done", 200.0, route="orders", request=ORDER),
            FinishRun("done", "failed", StoredResponse(502, [], big), 250.0),
            create("parked", 300.0),
            SuspendRun("parked", 2, 900.0, 310.0),
        ]
    )

    runs, cursor = await store.list_runs(None, None, 10, None)

    assert cursor is None
    assert runs == [
        RunSummary(
            "parked", "chat", "suspended", 2, 300.0, 310.0, None, 900.0, "POST", "/chat?q=1", None
        ),
        RunSummary(
            "done", "orders", "failed", 1, 200.0, 250.0, 250.0, None, "POST", "/orders?q=1", 502
        ),
        RunSummary(
            "old", "chat", "running", 1, 100.0, 100.0, None, None, "POST", "/chat?q=1", None
        ),
    ]


async def test_list_runs_filters_by_route_and_status(store: FullStore) -> None:
    writes: list[Write] = []
    for i in range(12):
        route = "chat" if i % 2 else "orders"
        writes.append(create(f"r{i:02d}", 100.0 + i, route=route))
        if i % 3 == 0:
            writes.append(FinishRun(f"r{i:02d}", "succeeded", StoredResponse(200, [], b""), 200.0))
    await store.apply(writes)

    async def listed(route: str | None, status: str | None) -> list[str]:
        runs, cursor = await store.list_runs(route, status, 100, None)
        assert cursor is None
        assert all(route in (None, run.route) and status in (None, run.status) for run in runs)
        return [run.run_id for run in runs]

    assert await listed("chat", None) == ["r11", "r09", "r07", "r05", "r03", "r01"]
    assert await listed(None, "succeeded") == ["r09", "r06", "r03", "r00"]
    assert await listed("orders", "succeeded") == ["r06", "r00"]
    assert await listed("orders", "running") == ["r10", "r08", "r04", "r02"]
    assert await listed("nope", None) == []
    assert await listed(None, "paused") == []
    assert len(await listed(None, None)) == 12


async def test_cursor_pages_through_every_run_once_in_order(store: FullStore) -> None:
    # Ties in created_at on purpose: run_id orders them, so no page boundary loses one.
    await store.apply([create(f"r{i:03d}", 1000.0 + i // 4) for i in range(250)])

    pages = await page_through(store, None, None, 100)

    assert [len(page) for page in pages] == [100, 100, 50]
    listed = [run_id for page in pages for run_id in page]
    assert listed == [f"r{i:03d}" for i in reversed(range(250))]


async def test_cursor_pages_within_a_filter(store: FullStore) -> None:
    await store.apply(
        [create(f"r{i:03d}", 1000.0 + i, route="chat" if i % 5 else "orders") for i in range(250)]
    )

    pages = await page_through(store, "chat", "running", 30)

    listed = [run_id for page in pages for run_id in page]
    assert listed == [f"r{i:03d}" for i in reversed(range(250)) if i % 5]
    assert [len(page) for page in pages] == [30] * 6 + [20]


async def test_a_full_last_page_has_no_cursor(store: FullStore) -> None:
    await store.apply([create(f"r{i}", 100.0 + i) for i in range(4)])

    first, cursor = await store.list_runs(None, None, 2, None)
    second, last = await store.list_runs(None, None, 2, cursor)

    assert ids(first + second) == ["r3", "r2", "r1", "r0"]
    assert cursor is not None and last is None
    assert await store.list_runs("chat", None, 4, None) == (first + second, None)


async def test_runs_created_meanwhile_do_not_shift_the_pages(store: FullStore) -> None:
    await store.apply([create(f"r{i}", 100.0 + i) for i in range(6)])
    first, cursor = await store.list_runs(None, None, 3, None)

    await store.apply([create("newer", 500.0), create("newest", 501.0)])
    second, _ = await store.list_runs(None, None, 3, cursor)

    assert ids(first) == ["r5", "r4", "r3"]
    assert ids(second) == ["r2", "r1", "r0"]


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        "%%%%",
        encode_cursor(1.0, "r1")[:-1] + "*",
        "MTIz",  # "123": no separator
        "fDEyMw",  # "|123": no time
        "MTIzfA",  # "123|": no run id
        "YWJjfHIx",  # "abc|r1"
        "bmFufHIx",  # "nan|r1"
        "_-8",  # not UTF-8
    ],
)
async def test_a_malformed_cursor_is_a_value_error(store: FullStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.list_runs(None, None, 10, cursor)


async def test_limit_must_be_positive(store: FullStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_runs(None, None, 0, None)


@pytest.mark.parametrize(
    ("created_at", "run_id"),
    [(0.0, "a"), (1712345678.123456, "Zx-_9"), (1e-7, "with|bar|s"), (-5.5, "\u00e9t\u00e9")],
)
def test_cursor_round_trips_exactly(created_at: float, run_id: str) -> None:
    cursor = encode_cursor(created_at, run_id)

    assert decode_cursor(cursor) == (created_at, run_id)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor


async def test_list_steps_gives_sizes_in_recorded_order(store: FullStore) -> None:
    big = b'"' + b"y" * 200_000 + b'"'
    await store.apply(
        [
            create("r1", 100.0),
            create("r2", 100.0),
            PutStep("r1", "second", b"[1,2]", 2, 120.0),
            PutStep("r1", "first", big, 1, 110.0),
            PutStep("r1", "third", b"null", 2, 130.0),
            PutStep("r2", "other", b"1", 1, 115.0),
        ]
    )

    assert await store.list_steps("r1") == [
        StepRow("first", 1, 110.0, len(big)),
        StepRow("second", 2, 120.0, 5),
        StepRow("third", 2, 130.0, 4),
    ]
    assert await store.list_steps("unknown") == []


async def test_list_steps_gives_the_timing_a_backend_reported(store: FullStore) -> None:
    # One batch: several steps go in one statement (arrays on PostgreSQL, a multi-row
    # VALUES on SQLite), with and without timing side by side.
    await store.apply(
        [
            create("r1", 100.0),
            PutStep("r1", "both", b"1", 1, 110.0, started_at=109.25, duration_ms=750.5),
            PutStep("r1", "neither", b"2", 1, 111.0),
            PutStep("r1", "start", b"3", 1, 112.0, started_at=111.5),
            PutStep("r1", "took", b"4", 1, 113.0, duration_ms=0.0),
        ]
    )
    # First write wins: a replay with other timing changes nothing.
    await store.apply([PutStep("r1", "both", b"1", 2, 120.0, started_at=1.0, duration_ms=2.0)])

    assert await store.list_steps("r1") == [
        StepRow("both", 1, 110.0, 1, 109.25, 750.5),
        StepRow("neither", 1, 111.0, 1, None, None),
        StepRow("start", 1, 112.0, 1, 111.5, None),
        StepRow("took", 1, 113.0, 1, None, 0.0),
    ]


# --- SQLite: every read on its index ------------------------------------------------


def plan_of(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] | list[object]) -> str:
    return str(conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gw.db"


@pytest.fixture
async def migrated(db_path: Path) -> Path:
    store = await open_store("sqlite:///" + str(db_path))
    await store.close()
    return db_path


@pytest.mark.parametrize(
    ("route", "status", "index"),
    [
        (None, None, "runs_list"),
        ("chat", None, "runs_list_route"),
        (None, "failed", "runs_list_status"),
        (None, "suspended", "runs_list_status"),
    ],
)
@pytest.mark.parametrize("cursor", [None, encode_cursor(5.0, "r1")])
def test_sqlite_listing_is_an_index_range_without_a_sort(
    migrated: Path, route: str | None, status: str | None, index: str, cursor: str | None
) -> None:
    sql, params = list_runs_query(route, status, 100, cursor)
    with closing(sqlite3.connect(migrated)) as conn:
        plan = plan_of(conn, sql, params)

    assert re.search(rf"USING INDEX {index}\b", plan), plan
    assert "TEMP B-TREE" not in plan, plan


def test_sqlite_listing_with_both_filters_uses_an_index_without_a_sort(migrated: Path) -> None:
    sql, params = list_runs_query("chat", "failed", 100, encode_cursor(5.0, "r1"))
    with closing(sqlite3.connect(migrated)) as conn:
        plan = plan_of(conn, sql, params)

    assert "runs_list_route" in plan or "runs_list_status" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize(
    ("sql", "params", "index"),
    [
        (sqlite_suspensions.DUE, (5.0, 5.0, 500), "runs_suspended_wake (wake_at<?)"),
        (sqlite_suspensions.NEXT_WAKE, (), "runs_suspended_wake"),
        (sqlite_suspensions.COUNT_PENDING, (), "COVERING INDEX pending_match"),
        (sqlite_suspensions.COUNT_TIMERS, (), "COVERING INDEX runs_suspended_wake (wake_at>?)"),
        (
            sqlite_suspensions.PATH_LISTS,
            ("payment", "", 10),
            "COVERING INDEX pending_match (kind=? AND event=? AND paths>?)",
        ),
        (
            sqlite_suspensions.WAITS_BY_KEY,
            ("payment", '["a"]', b"{}", "", "", 10),
            "pending_match (kind=? AND event=? AND paths=? AND match=? AND (run_id,step_id)>(?,?))",
        ),
        (
            sqlite_suspensions.WAITS_UNINDEXED,
            ("payment", "", "", "", 10),
            "pending_match (kind=? AND event=? AND paths=? AND (match,run_id,step_id)>(?,?,?))",
        ),
        (sqlite_suspensions.EVENTS_SINCE, ("payment", 5.0, 10), "events_name_ts (name=? AND ts>?)"),
        (sqlite_sql.PURGE_EVENTS, (5.0, 10), "events_ts (ts<?)"),
        (sqlite_sql.PURGEABLE, (5.0, 10), "runs_finished (finished_at<?)"),
    ],
)
async def test_sqlite_store_reads_use_their_index(
    migrated: Path, sql: str, params: tuple[object, ...], index: str
) -> None:
    with closing(sqlite3.connect(migrated)) as conn:
        plan = plan_of(conn, sql, params)

    assert index in plan, plan
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
