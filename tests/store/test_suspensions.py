"""Durable sleep and wait-for-event in the store: pending rows, suspension, due claims,
events, completing a wait, cancel and retry. Contract tests: every database passes them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from gateway.errors import StoreRejected, StoreUnavailable
from gateway.store import (
    AddedEvent,
    CancelRun,
    CompletedWait,
    DropPending,
    EventRow,
    FinishRun,
    FullStore,
    PendingRow,
    PutPending,
    PutStep,
    RecordAttempt,
    ResetRun,
    RunRow,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)
from step_protocol import wire
from tests.store.records import REQUEST, create, ids

if TYPE_CHECKING:
    from tests.store.conftest import Database

DONE = StoredResponse(200, [("Content-Type", "text/plain")], b"done")
CANCELLED = StoredResponse(409, [("Content-Type", "application/problem+json")], b'{"x":1}')
TTL = 30.0
MATCH = b'{"data.order_id":"42"}'


def sleep(
    run_id: str, step_id: str = "nap", wake_at: float = 500.0, at: float = 110.0
) -> PutPending:
    return PutPending(run_id, step_id, "sleep", wake_at, None, None, at)


def wait(
    run_id: str,
    step_id: str = "paid",
    event: str = "payment",
    wake_at: float | None = None,
    at: float = 110.0,
    match: bytes | None = MATCH,
) -> PutPending:
    return PutPending(run_id, step_id, "wait", wake_at, event, match, at)


def suspended(run_id: str, wake_at: float | None, at: float = 100.0) -> list[Write]:
    """A run whose first attempt ended suspended until wake_at (None: an event)."""
    return [
        create(run_id, at, owner="node-a", lease_until=at + TTL),
        SuspendRun(run_id, 1, wake_at, at + 1),
    ]


async def run_of(store: FullStore, run_id: str) -> RunRow:
    row = await store.get_run(run_id)
    assert row is not None
    return row


# --- pending rows -----------------------------------------------------------------


async def test_put_pending_round_trips_and_the_first_write_wins(store: FullStore) -> None:
    await store.apply([create("r1"), sleep("r1", "nap", 500.0, at=110.0), wait("r1", at=111.0)])
    # A later attempt asks again with other values: the first ones stand.
    await store.apply([sleep("r1", "nap", 900.0, at=200.0), wait("r1", event="other", at=201.0)])

    nap = PendingRow("r1", "nap", "sleep", 500.0, None, None, 110.0)
    paid = PendingRow("r1", "paid", "wait", None, "payment", MATCH, 111.0)
    assert await store.get_pending("r1", "nap") == nap
    assert await store.get_pending("r1", "paid") == paid
    assert await store.get_pending("r1", "other") is None
    assert await store.get_pending("r2", "nap") is None
    assert await store.list_pending("r1") == [nap, paid]
    assert await store.list_pending("r2") == []


async def test_drop_pending_deletes_one_step_or_all_of_a_run(store: FullStore) -> None:
    await store.apply(
        [
            create("r1"),
            create("r2"),
            sleep("r1", "a"),
            sleep("r1", "b"),
            wait("r1", "c"),
            sleep("r2", "a"),
        ]
    )

    await store.apply([DropPending("r1", "b"), DropPending("r1", "missing")])
    assert [p.step_id for p in await store.list_pending("r1")] == ["a", "c"]

    await store.apply([DropPending("r1")])
    assert await store.list_pending("r1") == []
    assert [p.step_id for p in await store.list_pending("r2")] == ["a"]


async def test_count_pending_counts_by_kind(store: FullStore) -> None:
    assert await store.count_pending() == {"sleep": 0, "wait": 0}

    await store.apply(
        [
            *suspended("r1", 500.0),
            sleep("r1"),
            *suspended("r2", None),
            wait("r2"),
            *suspended("r3", 600.0),
            wait("r3", wake_at=600.0),
        ]
    )

    assert await store.count_pending() == {"sleep": 1, "wait": 2}
    await store.apply([DropPending("r3")])
    assert await store.count_pending() == {"sleep": 1, "wait": 1}


async def test_count_timers_counts_suspended_runs_with_a_wake_time(store: FullStore) -> None:
    assert await store.count_timers() == 0

    await store.apply(
        [
            *suspended("sleeping", 500.0),
            *suspended("timeout", 600.0),
            *suspended("event-only", None),
            create("backoff"),
            UpdateRun("backoff", "backoff", 2, 150.0, 110.0),
        ]
    )

    assert await store.count_timers() == 2
    await store.claim_due("a", 550.0, TTL)
    assert await store.count_timers() == 1


async def test_count_suspends_counts_a_runs_suspended_attempts(store: FullStore) -> None:
    await store.apply(
        [
            create("r1"),
            RecordAttempt("r1", 1, 100.0, 101.0, "suspended"),
            RecordAttempt("r1", 2, 102.0, 103.0, "response", 500),
            RecordAttempt("r1", 3, 104.0, 105.0, "suspended"),
            RecordAttempt("r1", 4, 106.0, 107.0, "timeout"),
            create("r2"),
            RecordAttempt("r2", 1, 100.0, 101.0, "suspended"),
            create("r3"),
        ]
    )

    assert await store.count_suspends("r1") == 2
    assert await store.count_suspends("r2") == 1
    assert await store.count_suspends("r3") == 0
    assert await store.count_suspends("unknown") == 0


# --- suspending and waking --------------------------------------------------------


async def test_suspend_run_parks_it_and_releases_its_lease(store: FullStore) -> None:
    await store.apply(
        [create("r1", owner="node-a", lease_until=130.0), SuspendRun("r1", 2, 500.0, 120.0)]
    )

    run = await run_of(store, "r1")

    assert (run.status, run.attempt, run.wake_at, run.updated_at) == ("suspended", 2, 500.0, 120.0)
    assert (run.owner, run.lease_until) == (None, None)
    assert (run.finished_at, run.response) == (None, None)
    # Nobody renews it: it is in the store alone.
    assert await store.renew_leases("node-a", 999.0) == 0


async def test_suspend_run_never_revives_a_finished_run(store: FullStore) -> None:
    await store.apply([create("r1"), FinishRun("r1", "succeeded", DONE, 120.0)])
    await store.apply([SuspendRun("r1", 2, 500.0, 130.0, "sleep:nap")])

    run = await run_of(store, "r1")

    assert (run.status, run.attempt, run.wake_at, run.response) == ("succeeded", 1, None, DONE)
    assert run.suspended_on is None


async def test_a_run_keeps_what_its_last_suspension_was_on(store: FullStore) -> None:
    await store.apply(
        [
            create("nap", owner="node-a", lease_until=130.0),
            create("paid", owner="node-a", lease_until=130.0),
            create("never"),
            # One batch: both suspensions go in one statement.
            SuspendRun("nap", 1, 150.0, 101.0, "sleep:nap"),
            SuspendRun("paid", 1, None, 101.0, "wait:paid"),
        ]
    )
    assert (await run_of(store, "nap")).suspended_on == "sleep:nap"
    assert (await run_of(store, "paid")).suspended_on == "wait:paid"
    assert (await run_of(store, "never")).suspended_on is None

    # Woken, it still says what it slept on: a resumed run's suspension span needs it.
    [due] = await store.claim_due("node-b", 200.0, TTL)
    assert (due.run_id, due.status, due.suspended_on) == ("nap", "running", "sleep:nap")
    assert await store.get_run("nap") == due
    # Its node died: recovery reads it back too.
    claimed = await store.claim_unfinished("node-c", 300.0, TTL)
    assert {row.run_id: row.suspended_on for row in claimed} == {"nap": "sleep:nap", "never": None}

    # The next suspension replaces it, and one that names nothing clears it.
    await store.apply([SuspendRun("nap", 2, 400.0, 301.0, "wait:ok")])
    assert (await run_of(store, "nap")).suspended_on == "wait:ok"
    await store.apply([SuspendRun("nap", 3, 400.0, 302.0)])
    assert (await run_of(store, "nap")).suspended_on is None


async def test_claim_unfinished_leaves_suspended_runs_to_claim_due(store: FullStore) -> None:
    await store.apply(
        [
            *suspended("due", 150.0),
            *suspended("event-only", None),
            create("active", at=100.0),
            create("backoff", at=101.0),
            UpdateRun("backoff", "backoff", 2, 150.0, 102.0),
        ]
    )

    assert ids(await store.claim_unfinished("a", 200.0, TTL)) == ["active", "backoff"]
    assert ids(await store.claim_unfinished("b", 900.0, TTL, steal=True)) == ["active", "backoff"]
    assert ids(await store.claim_due("c", 200.0, TTL)) == ["due"]


async def test_claim_due_takes_due_runs_earliest_first_up_to_limit(store: FullStore) -> None:
    wakes = {"r0": 400.0, "r1": 150.0, "r2": 300.0, "r3": 200.0, "r4": 350.0, "late": 900.0}
    await store.apply(
        [
            *[w for run_id, wake in wakes.items() for w in suspended(run_id, wake)],
            *suspended("event-only", None),
            # Not suspended: a wake time alone does not make a run the scheduler's.
            create("backoff"),
            UpdateRun("backoff", "backoff", 2, 100.0, 110.0),
            create("finished"),
            FinishRun("finished", "failed", DONE, 120.0),
        ]
    )

    first = await store.claim_due("a", 400.0, TTL, limit=3)
    rest = await store.claim_due("a", 400.0, TTL, limit=3)

    assert ids(first) == ["r1", "r3", "r2"]
    # Due is wake_at <= now: r0 wakes exactly at 400.
    assert ids(rest) == ["r4", "r0"]
    assert await store.claim_due("a", 400.0, TTL) == []
    for row in first + rest:
        assert (row.status, row.wake_at, row.owner, row.lease_until) == (
            "running",
            None,
            "a",
            430.0,
        )
        assert row.updated_at == 400.0
        assert row.request == REQUEST
        assert await store.get_run(row.run_id) == row
    late = await run_of(store, "late")
    assert (late.status, late.wake_at, late.owner) == ("suspended", 900.0, None)


async def test_a_run_claimed_due_is_recovered_when_its_node_dies(store: FullStore) -> None:
    await store.apply(suspended("r1", 150.0))
    assert ids(await store.claim_due("dead", 200.0, TTL)) == ["r1"]

    # Out of the due index at once, and held by its live lease...
    assert await store.claim_due("b", 210.0, TTL) == []
    assert await store.claim_unfinished("b", 210.0, TTL) == []
    # ...until the lease runs out: then it is an ordinary active run.
    assert ids(await store.claim_unfinished("b", 231.0, TTL)) == ["r1"]


async def test_claim_due_skips_a_live_lease(store: FullStore) -> None:
    await store.apply([*suspended("leased", 150.0), *suspended("free", 160.0)])
    # Nothing the gateway writes leaves a suspended run leased, but if something did,
    # a claim must not take it while the lease is live.
    assert ids(await store.claim_due("a", 200.0, TTL, limit=1)) == ["leased"]
    await store.apply([UpdateRun("leased", "suspended", 1, 150.0, 201.0)])
    assert (await run_of(store, "leased")).lease_until == 230.0

    assert ids(await store.claim_due("b", 210.0, TTL)) == ["free"]
    assert ids(await store.claim_due("b", 231.0, TTL)) == ["leased"]


async def test_concurrent_due_claims_never_share_a_run(store: FullStore) -> None:
    await store.apply([w for i in range(40) for w in suspended(f"r{i:02d}", 100.0 + i)])

    results = await asyncio.gather(*(store.claim_due(owner, 500.0, TTL, 7) for owner in "abcdefgh"))

    claimed = [run_id for rows in results for run_id in ids(rows)]
    assert sorted(claimed) == [f"r{i:02d}" for i in range(40)]


async def test_next_wake_at_is_the_earliest_suspended_wake(store: FullStore) -> None:
    assert await store.next_wake_at() is None

    await store.apply(
        [
            *suspended("event-only", None),
            create("backoff"),
            UpdateRun("backoff", "backoff", 2, 50.0, 110.0),
        ]
    )
    # A backoff run's wake time is its driver's business; event-only waits have none.
    assert await store.next_wake_at() is None

    await store.apply([*suspended("b", 300.0), *suspended("a", 250.0)])
    assert await store.next_wake_at() == 250.0

    await store.claim_due("x", 260.0, TTL)
    assert await store.next_wake_at() == 300.0


# --- events -----------------------------------------------------------------------


async def test_add_event_deduplicates_by_id(store: FullStore) -> None:
    assert (await store.add_event("e1", "payment", b'{"order_id":"42"}', 100.0)).new
    assert not (await store.add_event("e1", "payment", b'{"order_id":"43"}', 101.0)).new
    assert not (await store.add_event("e1", "other", b"{}", 102.0)).new

    assert await store.events_since("payment", 0.0) == [
        EventRow("e1", "payment", b'{"order_id":"42"}', 100.0)
    ]
    assert await store.events_since("other", 0.0) == []


async def test_events_since_filters_by_name_and_time_oldest_first(store: FullStore) -> None:
    for event_id, name, ts in [
        ("e3", "payment", 300.0),
        ("e1", "payment", 100.0),
        ("x1", "shipment", 150.0),
        ("e2", "payment", 200.0),
        ("e2b", "payment", 200.0),
    ]:
        assert (await store.add_event(event_id, name, b"null", ts)).new

    def names(rows: list[EventRow]) -> list[str]:
        return [row.event_id for row in rows]

    assert names(await store.events_since("payment", 0.0)) == ["e1", "e2", "e2b", "e3"]
    # `since` is inclusive.
    assert names(await store.events_since("payment", 200.0)) == ["e2", "e2b", "e3"]
    assert names(await store.events_since("payment", 200.0, limit=2)) == ["e2", "e2b"]
    assert names(await store.events_since("payment", 300.5)) == []


def payment(event_id: str = "e1", data: bytes = b'{"order_id":"42"}', ts: float = 200.0) -> bytes:
    """The output of a wait the `payment` event completes: its event object, keys sorted."""
    return orjson.dumps(
        wire.event_output(event_id, "payment", orjson.loads(data), ts),
        option=orjson.OPT_SORT_KEYS,
    )


async def test_add_event_completes_the_matching_waits_of_suspended_runs(
    store: FullStore,
) -> None:
    await store.apply(
        [
            *suspended("r1", None),
            wait("r1", "paid", "payment", at=120.0),
            *suspended("r2", 900.0),
            wait("r2", "paid", "payment", wake_at=900.0, at=110.0, match=None),
            *suspended("other-id", None),
            wait("other-id", "paid", "payment", match=b'{"data.order_id":"43"}'),
            *suspended("r3", None),
            wait("r3", "shipped", "shipment"),
            *suspended("r4", 300.0),
            sleep("r4", "payment"),  # a sleep, although named like the event
            create("running"),  # its attempt is live: its driver answers it
            wait("running", "paid", "payment"),
            *suspended("cancelled", None),
            wait("cancelled", "paid", "payment"),
            CancelRun("cancelled", CANCELLED, 130.0),
            *suspended("done-already", None),
            wait("done-already", "paid", "payment"),
            PutStep("done-already", "paid", b"null", 1, 150.0),
        ]
    )

    added = await store.add_event("e1", "payment", b'{"order_id":"42"}', 200.0)

    output = payment()
    assert added == AddedEvent(
        True, (CompletedWait("r1", "paid", output), CompletedWait("r2", "paid", output))
    )
    for run_id in ("r1", "r2"):
        assert await store.load_steps(run_id) == {"paid": output}
        assert await store.list_pending(run_id) == []
        run = await run_of(store, run_id)
        assert (run.status, run.wake_at) == ("suspended", 200.0)
    assert ids(await store.claim_due("a", 200.0, TTL)) == ["r1", "r2"]
    for run_id in ("other-id", "r3", "r4", "running", "done-already"):
        assert len(await store.list_pending(run_id)) == 1, run_id
    assert await store.load_steps("running") == {}
    assert await store.load_steps("done-already") == {"paid": b"null"}
    assert [e.event_id for e in await store.events_since("payment", 0.0)] == ["e1"]


async def test_a_duplicate_event_completes_nothing_and_the_first_ones_stay_done(
    store: FullStore,
) -> None:
    await store.apply([*suspended("r1", None), wait("r1")])
    first = await store.add_event("e1", "payment", b'{"order_id":"42"}', 200.0)
    await store.apply([*suspended("r2", None), wait("r2")])

    again = await store.add_event("e1", "payment", b'{"order_id":"42"}', 300.0)

    assert first.completed == (CompletedWait("r1", "paid", payment()),)
    assert again == AddedEvent(False, ())
    assert await store.load_steps("r1") == {"paid": payment()}
    assert await store.list_pending("r1") == []
    # The repeat is not an event again: a wait made since is left to later events.
    assert len(await store.list_pending("r2")) == 1


async def test_an_event_is_stored_only_with_the_completions_it_makes(
    store: FullStore, database: Database
) -> None:
    await store.apply([*suspended("r1", None), wait("r1"), *suspended("r2", None), wait("r2")])
    await database.fail_step_insert("paid")

    with pytest.raises(StoreUnavailable):
        await store.add_event("e1", "payment", b'{"order_id":"42"}', 200.0)

    # Neither the event nor any completion: a retry of the post is a new event, not a
    # duplicate that would leave the runs waiting for ever.
    assert await store.events_since("payment", 0.0) == []
    assert len(await store.list_pending("r1")) == len(await store.list_pending("r2")) == 1
    assert (await run_of(store, "r1")).wake_at is None


async def test_add_event_pages_through_many_waits_and_path_lists(store: FullStore) -> None:
    writes: list[Write] = []
    for i in range(7):  # one path list, seven waits behind the same key
        writes += [*suspended(f"same-{i}", None), wait(f"same-{i}")]
    for i in range(5):  # five path lists, each with a fitting and a non-fitting wait
        fits = orjson.dumps({"data.order_id": "42", f"data.k{i}": i})
        writes += [*suspended(f"fits-{i}", None), wait(f"fits-{i}", match=fits)]
        misses = orjson.dumps({"data.order_id": "42", f"data.k{i}": -1})
        writes += [*suspended(f"misses-{i}", None), wait(f"misses-{i}", match=misses)]
    await store.apply(writes)
    data = orjson.dumps({"order_id": "42", **{f"k{i}": i for i in range(5)}})

    added = await store.add_event("e1", "payment", data, 200.0, page=2)

    assert sorted(w.run_id for w in added.completed) == sorted(
        [f"same-{i}" for i in range(7)] + [f"fits-{i}" for i in range(5)]
    )
    assert {w.output for w in added.completed} == {payment(data=data)}
    for i in range(5):
        assert len(await store.list_pending(f"misses-{i}")) == 1


# Awkward matches and events: what the index finds must be what `wire.event_matches`
# finds, value for value.
MATCHES: list[dict[str, Any]] = [
    {},
    {"data.n": 1},
    {"data.n": 1.0},
    {"data.n": True},
    {"data.n": "1"},
    {"data.n": 0},
    {"data.n": -0.0},
    {"data.n": False},
    {"data.n": None},
    {"data.n": 0.1},
    {"data.n": 100},
    {"data.n": 18446744073709551615},
    {"data.n": 1.8446744073709552e19},
    {"data.n": 9007199254740993},
    {"data.n": [1, 2.0, {"b": 1, "a": [True]}]},
    {"data.n": {"b": 2, "a": 1.0}},
    {"data.n": {"a": 1}},
    {"data.n.a": 1},
    {"data.n.0": 1},
    {"data.": 5},
    {"data.x.y": None},
    {"data.é.ü": "ß", "data.n": 1},
    {"data.a.b": 1},
    {"data": {"n": 1}},
    {"name": "payment"},
    {"id": "e-1", "data.n": 1},
    {"data.n": '\u0000"\n'},
    {"data.n": 1, "data.m": 2},
    {"data.m": 2.0, "data.n": 1},
]
EVENTS: list[Any] = [
    {"n": 1},
    {"n": 1.0, "m": 2},
    {"n": True},
    {"n": "1"},
    {"n": 0},
    {"n": -0.0},
    {"n": False},
    {"n": None},
    {},
    {"n": 0.1},
    {"n": 1e2},
    {"n": 18446744073709551615},
    {"n": 1.8446744073709552e19},
    {"n": 9007199254740992.0},
    {"n": 9007199254740993},
    {"n": [1.0, 2, {"a": [True], "b": 1.0}]},
    {"n": [1, 2]},
    {"n": {"a": 1, "b": 2}},
    {"n": {"a": 1.0}},
    {"n": [1]},
    {"": 5},
    {"x": {"y": None}},
    {"x": None},
    {"a.b": 1},
    {"é": {"ü": "ß"}, "n": 1},
    {"n": '\u0000"\n'},
]


@pytest.mark.parametrize("data", EVENTS, ids=lambda d: orjson.dumps(d).decode())
async def test_the_index_finds_what_event_matches_finds(store: FullStore, data: Any) -> None:
    writes: list[Write] = []
    for i, match in enumerate(MATCHES):
        writes += [*suspended(f"r{i:02}", None), wait(f"r{i:02}", match=orjson.dumps(match))]
    await store.apply(writes)
    raw = orjson.dumps(data)
    event = wire.event_output("e-1", "payment", orjson.loads(raw), 200.0)

    added = await store.add_event("e-1", "payment", raw, 200.0, page=3)

    expected = [f"r{i:02}" for i, m in enumerate(MATCHES) if wire.event_matches(m, event)]
    assert sorted(w.run_id for w in added.completed) == expected
    assert "r00" in expected  # the empty match takes every event of its name


async def test_complete_wait_records_the_step_and_makes_the_run_due(store: FullStore) -> None:
    await store.apply(
        [
            *suspended("r1", 900.0),
            UpdateRun("r1", "suspended", 3, 900.0, 105.0),
            wait("r1", wake_at=900.0),
        ]
    )
    await store.apply([PutStep("r1", "before", b"1", 1, 101.0)])

    assert await store.complete_wait("r1", "paid", b'{"name":"payment"}', 200.0)

    assert await store.load_steps("r1") == {"before": b"1", "paid": b'{"name":"payment"}'}
    steps = {s.step_id: s for s in await store.list_steps("r1")}
    assert (steps["paid"].attempt, steps["paid"].created_at) == (3, 200.0)
    assert await store.get_pending("r1", "paid") is None
    run = await run_of(store, "r1")
    assert (run.status, run.wake_at) == ("suspended", 200.0)
    assert await store.next_wake_at() == 200.0
    assert ids(await store.claim_due("a", 200.0, TTL)) == ["r1"]


async def test_complete_wait_twice_completes_it_once(store: FullStore) -> None:
    await store.apply([*suspended("r1", None), wait("r1")])

    assert await store.complete_wait("r1", "paid", b'"first"', 200.0)
    assert not await store.complete_wait("r1", "paid", b'"second"', 201.0)

    assert await store.load_steps("r1") == {"paid": b'"first"'}
    assert len(await store.list_steps("r1")) == 1
    assert (await run_of(store, "r1")).wake_at == 200.0


async def test_racing_completions_of_one_wait_let_exactly_one_win(store: FullStore) -> None:
    await store.apply([*suspended("r1", None), wait("r1")])

    results = await asyncio.gather(
        *(store.complete_wait("r1", "paid", f'"{i}"'.encode(), 200.0 + i) for i in range(8))
    )

    assert sum(results) == 1
    winner = results.index(True)
    assert await store.load_steps("r1") == {"paid": f'"{winner}"'.encode()}


async def test_complete_wait_refuses_what_is_not_an_open_wait(store: FullStore) -> None:
    await store.apply(
        [
            *suspended("r1", 500.0),
            sleep("r1", "nap"),
            wait("r1", "done-already"),
            PutStep("r1", "done-already", b'"timeout"', 1, 150.0),
        ]
    )

    assert not await store.complete_wait("r1", "nap", b"{}", 200.0)  # a sleep
    assert not await store.complete_wait("r1", "unknown", b"{}", 200.0)
    assert not await store.complete_wait("nope", "paid", b"{}", 200.0)
    # The step was completed meanwhile (say the wait timed out): first write stands.
    assert not await store.complete_wait("r1", "done-already", b"{}", 200.0)

    assert await store.load_steps("r1") == {"done-already": b'"timeout"'}
    assert len(await store.list_pending("r1")) == 2
    assert (await run_of(store, "r1")).wake_at == 500.0


async def test_complete_wait_of_a_live_run_leaves_its_status_and_wake(store: FullStore) -> None:
    await store.apply([create("r1"), UpdateRun("r1", "running", 2, None, 101.0), wait("r1")])

    assert await store.complete_wait("r1", "paid", b"{}", 200.0)

    run = await run_of(store, "r1")
    assert (run.status, run.wake_at) == ("running", None)
    assert await store.load_steps("r1") == {"paid": b"{}"}
    assert await store.list_pending("r1") == []


# --- ending and retrying ----------------------------------------------------------


async def test_finish_run_deletes_the_runs_pending_rows(store: FullStore) -> None:
    await store.apply([create("r1"), create("r2"), sleep("r1"), wait("r1"), sleep("r2")])

    await store.apply([FinishRun("r1", "succeeded", DONE, 200.0)])

    assert await store.list_pending("r1") == []
    assert len(await store.list_pending("r2")) == 1


async def test_cancel_run_stores_its_response_and_drops_its_timers(store: FullStore) -> None:
    await store.apply(
        [
            *suspended("r1", 500.0),
            sleep("r1"),
            wait("r1"),
            PutStep("r1", "kept", b"1", 1, 101.0),
            *suspended("r2", 600.0),
            sleep("r2"),
        ]
    )

    await store.apply([CancelRun("r1", CANCELLED, 200.0)])

    run = await run_of(store, "r1")
    assert (run.status, run.response, run.finished_at, run.updated_at) == (
        "cancelled",
        CANCELLED,
        200.0,
        200.0,
    )
    assert (run.wake_at, run.owner, run.lease_until) == (None, None, None)
    assert await store.list_pending("r1") == []
    assert await store.load_steps("r1") == {"kept": b"1"}
    assert await store.count_pending() == {"sleep": 1, "wait": 0}
    assert ids(await store.claim_due("a", 1000.0, TTL)) == ["r2"]
    assert ids(await store.claim_unfinished("b", 2000.0, TTL, steal=True)) == ["r2"]


async def test_cancel_run_leaves_a_finished_run_its_result(store: FullStore) -> None:
    await store.apply([create("r1"), FinishRun("r1", "succeeded", DONE, 150.0)])

    await store.apply([CancelRun("r1", CANCELLED, 200.0)])

    run = await run_of(store, "r1")
    assert (run.status, run.response, run.finished_at) == ("succeeded", DONE, 150.0)


async def test_reset_run_runs_a_failed_run_again_with_its_steps(store: FullStore) -> None:
    await store.apply(
        [
            create("r1"),
            PutStep("r1", "a", b'"A"', 1, 101.0),
            RecordAttempt("r1", 1, 100.0, 102.0, "response", 500),
            FinishRun("r1", "failed", StoredResponse(500, [], b"boom"), 150.0),
        ]
    )

    await store.apply([ResetRun("r1", 2, 300.0)])

    run = await run_of(store, "r1")
    assert (run.status, run.attempt, run.updated_at) == ("running", 2, 300.0)
    assert (run.response, run.finished_at, run.wake_at) == (None, None, None)
    assert (run.owner, run.lease_until) == (None, None)
    assert await store.load_steps("r1") == {"a": b'"A"'}
    assert len(await store.list_attempts("r1")) == 1
    # Unfinished again: retention keeps it, and any node may take it.
    assert await store.purge_before(1000.0) == 0
    assert ids(await store.claim_unfinished("b", 400.0, TTL)) == ["r1"]


async def test_reset_run_can_lease_the_run_to_the_node_that_retries_it(store: FullStore) -> None:
    await store.apply([create("r1"), CancelRun("r1", CANCELLED, 150.0)])

    await store.apply([ResetRun("r1", 3, 300.0, owner="me", lease_until=330.0)])

    run = await run_of(store, "r1")
    assert (run.status, run.attempt, run.owner, run.lease_until) == ("running", 3, "me", 330.0)
    assert run.response is None
    assert await store.claim_unfinished("other", 310.0, TTL) == []


async def test_a_batch_orders_pending_writes_around_run_endings(store: FullStore) -> None:
    """FinishRun and CancelRun also write `pending`: a batch keeps their order there."""
    await store.apply(
        [
            # Other runs' endings first, so their kinds' statements come early.
            create("x"),
            FinishRun("x", "succeeded", DONE, 140.0),
            CancelRun("x", CANCELLED, 141.0),
            create("a"),
            sleep("a", "before"),
            CancelRun("a", CANCELLED, 150.0),
            sleep("a", "after"),
            create("b"),
            DropPending("b"),
            wait("b", "w"),
            create("c"),
            wait("c", "w"),
            FinishRun("c", "succeeded", DONE, 160.0),
        ]
    )

    assert [p.step_id for p in await store.list_pending("a")] == ["after"]
    assert [p.step_id for p in await store.list_pending("b")] == ["w"]
    assert await store.list_pending("c") == []


async def test_a_failing_batch_writes_no_pending_row_or_suspension(
    store: FullStore, database: Database
) -> None:
    await store.apply([create("r1")])
    await database.fail_step_insert("boom")

    with pytest.raises(StoreRejected):
        await store.apply(
            [sleep("r1"), SuspendRun("r1", 1, 500.0, 110.0), PutStep("r1", "boom", b"1", 1, 1.0)]
        )

    assert await store.list_pending("r1") == []
    assert (await run_of(store, "r1")).status == "running"


# --- retention --------------------------------------------------------------------


async def test_purge_deletes_old_events_in_batches(store: FullStore, database: Database) -> None:
    for i in range(7):
        assert (await store.add_event(f"old-{i}", "payment", b"{}", 100.0 + i)).new
    assert (await store.add_event("young", "payment", b"{}", 900.0)).new

    # No runs to purge: the events alone keep the loop going while a batch is full.
    assert [await store.purge_before(500.0, limit=3) for _ in range(4)] == [3, 3, 1, 0]

    assert [e.event_id for e in await store.events_since("payment", 0.0)] == ["young"]
    assert await database.count("events") == 1
    # The id of a purged event is free again.
    assert (await store.add_event("old-0", "payment", b"{}", 901.0)).new


async def test_purge_takes_runs_and_events_in_the_same_batches(
    store: FullStore, database: Database
) -> None:
    finished: list[Write] = []
    for i in range(5):
        finished += [create(f"r{i}"), FinishRun(f"r{i}", "succeeded", DONE, 100.0 + i)]
    await store.apply(
        [
            *finished,
            create("done-pending"),
            sleep("done-pending"),
            FinishRun("done-pending", "failed", DONE, 50.0),
            sleep("done-pending", "orphan"),  # a late write, after the run ended
        ]
    )
    for i in range(2):
        assert (await store.add_event(f"e{i}", "payment", b"{}", 100.0 + i)).new

    assert await store.purge_before(500.0, limit=4) == 4
    assert await store.purge_before(500.0, limit=4) == 2
    assert await store.purge_before(500.0, limit=4) == 0

    assert await database.count("runs") == await database.count("events") == 0
    assert await database.count("pending") == 0
