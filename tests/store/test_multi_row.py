"""Batches step SQLite once per statement, not once per row (see `sqlite_sql.multi_row`);
large batches and claims (on every dialect) land as row-by-row writes would."""

from __future__ import annotations

from gateway.store import (
    AttemptRow,
    CreateRun,
    FinishRun,
    FullStore,
    PutStep,
    RecordAttempt,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.sqlite.sql import MAX_ROWS, claim_updates, multi_row, plan
from tests.store.records import ids

REQUEST = StoredRequest("POST", "/a", [("X-One", "1")], b"body")
RESPONSE = StoredResponse(200, [("Content-Type", "text/plain")], b"done")


def test_inserts_become_one_statement_with_the_rows_flattened_in_order() -> None:
    sql = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING"
    [(statement, rows)] = multi_row(sql, [(1, "x"), (2, "y"), (3, "z")])
    assert statement == (
        "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING"
    )
    assert rows == [(1, "x", 2, "y", 3, "z")]


def test_deletes_by_run_become_one_in_list() -> None:
    [(statement, rows)] = multi_row("DELETE FROM pending WHERE run_id = ?", [("a",), ("b",)])
    assert statement == "DELETE FROM pending WHERE run_id IN (?, ?)"
    assert rows == [("a", "b")]


def test_updates_and_single_rows_stay_as_they_are() -> None:
    update = "UPDATE runs SET status = ? WHERE run_id = ?"
    assert multi_row(update, [("x", "a"), ("y", "b")]) == [(update, [("x", "a"), ("y", "b")])]
    insert = "INSERT INTO t (a) VALUES (?)"
    assert multi_row(insert, [(1,)]) == [(insert, [(1,)])]


def test_long_batches_are_cut_into_bounded_statements() -> None:
    rows = [(i,) for i in range(2 * MAX_ROWS + 3)]
    parts = multi_row("INSERT INTO t (a) VALUES (?)", rows)
    assert [len(flat) for _, [flat] in parts] == [MAX_ROWS, MAX_ROWS, 3]
    assert [v for _, [flat] in parts for v in flat] == list(range(2 * MAX_ROWS + 3))


def test_claims_update_in_bounded_in_lists_with_the_values_first() -> None:
    ids = [f"r{i}" for i in range(MAX_ROWS + 2)]
    parts = claim_updates("owner = ?, lease_until = ?", ("me", 9.0), ids)
    [(first, head), (last, tail)] = parts
    assert first.startswith("UPDATE runs SET owner = ?, lease_until = ? WHERE run_id IN (?, ")
    assert head == ("me", 9.0, *ids[:MAX_ROWS])
    assert last == "UPDATE runs SET owner = ?, lease_until = ? WHERE run_id IN (?, ?)"
    assert tail == ("me", 9.0, *ids[MAX_ROWS:])
    assert claim_updates("owner = ?", ("me",), []) == []


async def test_claims_of_more_than_max_rows_runs_take_them_all(store: FullStore) -> None:
    count = 2 * MAX_ROWS + 1
    await store.apply(
        [CreateRun(f"a{i}", "r", REQUEST, 1.0) for i in range(count)]
        + [CreateRun(f"s{i}", "r", REQUEST, 1.0) for i in range(count)]
        + [SuspendRun(f"s{i}", 1, 5.0, 2.0) for i in range(count)]
    )

    unfinished = await store.claim_unfinished("me", 10.0, 30.0, limit=2 * count)
    due = await store.claim_due("you", 10.0, 30.0, limit=2 * count)

    assert sorted(ids(unfinished)) == sorted(f"a{i}" for i in range(count))
    assert sorted(ids(due)) == sorted(f"s{i}" for i in range(count))
    for i in (0, MAX_ROWS, count - 1):
        active, woken = await store.get_run(f"a{i}"), await store.get_run(f"s{i}")
        assert active is not None and (active.owner, active.lease_until) == ("me", 40.0)
        assert woken is not None
        assert (woken.status, woken.wake_at, woken.updated_at) == ("running", None, 10.0)
        assert (woken.owner, woken.lease_until) == ("you", 40.0)
    # Every one of them is leased: nothing is left for another claim.
    assert await store.claim_unfinished("other", 11.0, 30.0, limit=2 * count) == []
    assert await store.claim_due("other", 11.0, 30.0, limit=2 * count) == []


def test_a_mixed_batch_of_many_runs_is_a_handful_of_statements() -> None:
    writes: list[Write] = []
    for i in range(1000):
        run_id = f"r{i}"
        writes += [
            CreateRun(run_id, "r", REQUEST, 1.0),
            PutStep(run_id, "s", b"1", 1, 2.0),
            RecordAttempt(run_id, 1, 1.0, 3.0, "response", 200),
            FinishRun(run_id, "succeeded", RESPONSE, 3.0),
        ]
    # Created-and-finished runs and steps, two statements of 500 rows each; each run's
    # one successful attempt is kept in its row.
    statements = [sql for sql, _ in plan(writes)]
    assert len(statements) == 4
    assert not [sql for sql in statements if "attempts" in sql]


def test_only_a_first_attempt_that_succeeded_is_folded_into_its_run() -> None:
    ok, bad = StoredResponse(200, [], b""), StoredResponse(500, [], b"")
    writes: list[Write] = [
        CreateRun("happy", "r", REQUEST, 1.0),
        RecordAttempt("happy", 1, 1.0, 2.0, "response", 200),
        FinishRun("happy", "succeeded", ok, 2.0),
        CreateRun("failed", "r", REQUEST, 1.0),
        RecordAttempt("failed", 1, 1.0, 2.0, "response", 500),
        FinishRun("failed", "failed", bad, 2.0),
        RecordAttempt("earlier", 1, 1.0, 2.0, "response", 200),
        FinishRun("earlier", "succeeded", ok, 2.0),
    ]

    [rows] = [rows for sql, rows in plan(writes) if sql.startswith("INSERT INTO attempts")]

    # One two-row statement: the failure's attempt and the one of a run made earlier.
    assert [row[0::7] for row in rows] == [("failed", "earlier")]


async def test_a_large_batch_lands_exactly_as_row_by_row_writes_would(store: FullStore) -> None:
    first: list[Write] = []
    for i in range(1200):
        first += [CreateRun(f"r{i}", "r", REQUEST, 1.0), PutStep(f"r{i}", "s", b"1", 1, 2.0)]
        # The same attempt twice in one batch: the later row wins, as with executemany.
        first += [
            RecordAttempt(f"r{i}", 1, 1.0, 2.0, "timeout"),
            RecordAttempt(f"r{i}", 1, 1.0, 3.0, "response", 500, "late"),
        ]
    await store.apply(first)
    await store.apply(
        [UpdateRun(f"r{i}", "backoff", 1, 9.0, 4.0) for i in range(0, 1200, 2)]
        + [FinishRun(f"r{i}", "succeeded", RESPONSE, 5.0) for i in range(1, 1200, 2)]
        + [PutStep("r0", "s", b"second", 1, 6.0)]  # first write wins
    )
    assert await store.load_steps("r0") == {"s": b"1"}
    assert await store.list_attempts("r1199") == [AttemptRow(1, 1.0, 3.0, "response", 500, "late")]
    even, odd = await store.get_run("r600"), await store.get_run("r601")
    assert even is not None and (even.status, even.wake_at) == ("backoff", 9.0)
    assert odd is not None and (odd.status, odd.response) == ("succeeded", RESPONSE)
    assert len(await store.load_steps("r1199")) == 1
