"""suspensions: which event completes a wait, and the plans that sleep and wait calls make."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config import RouteConfig, RouteMatch
from gateway.engine import suspensions
from gateway.engine.runs import Pending, PendingKind, Run
from gateway.engine.suspensions import first_match, stored_events
from gateway.errors import BadRequest
from gateway.store import EventRow, StoredRequest
from step_protocol import wire

PAID = wire.event_output("e1", "order.paid", {"order_id": "42", "total": 10}, 100.0)
OTHER = wire.event_output("e2", "order.paid", {"order_id": "7"}, 101.0)


@pytest.mark.parametrize(
    ("match", "events", "first"),
    [
        ({"data.order_id": "42"}, [OTHER, PAID], PAID),
        (b'{"data.order_id":"42"}', [OTHER, PAID], PAID),  # as stored
        (None, [OTHER, PAID], OTHER),  # no criteria: the first event
        (b"", [OTHER, PAID], OTHER),
        ({"data.total": 10.0}, [PAID], PAID),  # JSON numbers by value
        ({"data.order_id": "1"}, [OTHER, PAID], None),
        ({"data.order_id": "42"}, [], None),
    ],
)
def test_first_match(
    match: dict[str, Any] | bytes | None, events: list[dict[str, Any]], first: Any
) -> None:
    expected = None if first is None else orjson.dumps(first, option=orjson.OPT_SORT_KEYS)
    assert first_match(match, events) == expected


def test_stored_events_decode_lazily_so_a_match_stops_the_reading() -> None:
    rows = [
        EventRow("e2", "order.paid", orjson.dumps({"order_id": "7"}), 101.0),
        EventRow("e1", "order.paid", orjson.dumps({"order_id": "42", "total": 10}), 100.0),
        EventRow("bad", "order.paid", b"not json", 102.0),  # never decoded
    ]
    output = first_match({"data.order_id": "42"}, stored_events(rows))
    assert output is not None and orjson.loads(output) == PAID


# --- the plans sleep and wait calls make of a run (pure: the driver applies them) ------

NOW = 1_000.0
ROUTE = RouteConfig("r", RouteMatch("/*"), "http://127.0.0.1:1")


def _run(**steps: bytes) -> Run:
    return Run("r1", ROUTE, StoredRequest("POST", "/", [], b""), NOW, 1, steps=steps)


def test_a_sleeps_first_call_fixes_it_and_suspends_the_attempt() -> None:
    plan = suspensions.sleep(_run(), "nap", NOW + 60, NOW)
    assert plan.fix == Pending("nap", PendingKind.SLEEP, NOW + 60, created_at=NOW)
    assert plan.suspend == plan.fix and plan.complete is None
    assert not plan.answer.done
    assert orjson.loads(plan.answer.body) == {
        "done": False,
        "wake_at": wire.format_timestamp(NOW + 60),
    }


def test_a_later_call_keeps_the_first_calls_wake_time_and_stores_nothing_new() -> None:
    run = _run()
    run.pending["nap"] = Pending("nap", PendingKind.SLEEP, NOW + 60, created_at=NOW)
    plan = suspensions.sleep(run, "nap", NOW + 3_600, NOW + 1)
    assert plan.fix is None
    assert plan.suspend is not None and plan.suspend.wake_at == NOW + 60


def test_a_sleep_that_is_due_completes_its_step_with_its_wake_time() -> None:
    run = _run()
    run.pending["nap"] = Pending("nap", PendingKind.SLEEP, NOW - 1, created_at=NOW - 61)
    plan = suspensions.sleep(run, "nap", NOW + 60, NOW)
    assert plan.answer.done and plan.suspend is None and plan.fix is None
    assert plan.complete == plan.answer.body
    assert orjson.loads(plan.answer.body) == {
        "done": True,
        "wake_at": wire.format_timestamp(NOW - 1),
    }


def test_a_done_step_answers_its_output_and_changes_nothing() -> None:
    slept = b'{"done":true,"wake_at":"2025-01-31T09:30:00.000Z"}'
    plan = suspensions.sleep(_run(nap=slept), "nap", NOW + 60, NOW)
    assert plan == suspensions.Plan("nap", suspensions.Answer(True, slept))
    paid = orjson.dumps(wire.event_output("e1", "order.paid", {}, NOW))
    done = suspensions.wait(_run(paid=paid), "paid", event="x", match={}, timeout_in=None, now=NOW)
    assert done == suspensions.Plan("paid", suspensions.Answer(True, b'{"event":' + paid + b"}"))
    timed_out = suspensions.wait(
        _run(paid=b"null"), "paid", event="x", match={}, timeout_in=None, now=NOW
    )
    assert timed_out.answer == suspensions.Answer(True, b'{"event":null}')


def test_a_step_id_is_either_a_sleep_or_a_wait() -> None:
    run = _run()
    run.pending["s"] = Pending("s", PendingKind.SLEEP, NOW + 60, created_at=NOW)
    with pytest.raises(BadRequest, match="is a sleep, not a wait"):
        suspensions.wait(run, "s", event="x", match={}, timeout_in=None, now=NOW)


@pytest.mark.parametrize(
    "output",
    [
        b"null",  # a PUT's output, or a timed-out wait's
        b"5",
        b"{}",
        b'{"done":true}',
        b'{"done":false,"wake_at":"2025-01-31T09:30:00.000Z"}',
        b'{"done":true,"wake_at":"soon"}',
        orjson.dumps(wire.event_output("e1", "order.paid", {}, NOW)),
    ],
)
def test_a_sleep_on_a_step_completed_otherwise_is_refused(output: bytes) -> None:
    """Found by fuzzing: it answered 200 with whatever the step held, not a sleep's body."""
    with pytest.raises(BadRequest, match="completed otherwise, not as a sleep"):
        suspensions.sleep(_run(nap=output), "nap", NOW + 60, NOW)


@pytest.mark.parametrize(
    "output",
    [
        b"{}",
        b"[1]",
        b'"text"',
        b'{"done":true,"wake_at":"2025-01-31T09:30:00.000Z"}',
        b'{"name":"order.paid","id":"e1","data":[],"ts":"2025-01-31T09:30:00.000Z"}',
        b'{"name":"order.paid","id":"e1","data":{},"ts":"yesterday"}',
    ],
)
def test_a_wait_on_a_step_completed_otherwise_is_refused(output: bytes) -> None:
    """Found by fuzzing: it answered 200 `{"event": <whatever the step held>}`."""
    with pytest.raises(BadRequest, match="completed otherwise, not as a wait"):
        suspensions.wait(_run(paid=output), "paid", event="x", match={}, timeout_in=None, now=NOW)


@pytest.mark.parametrize(
    ("timeout_in", "wake_at", "timeout_at"),
    [(None, None, None), (30.0, NOW + 30, wire.format_timestamp(NOW + 30))],
)
def test_a_waits_first_call_fixes_event_match_and_timeout(
    timeout_in: float | None, wake_at: float | None, timeout_at: str | None
) -> None:
    plan = suspensions.wait(
        _run(), "paid", event="order.paid", match={"b": 1, "a": 2}, timeout_in=timeout_in, now=NOW
    )
    assert plan.fix == Pending(
        "paid", PendingKind.WAIT, wake_at, "order.paid", b'{"a":2,"b":1}', NOW
    )
    assert plan.suspend == plan.fix and not plan.answer.done
    assert orjson.loads(plan.answer.body) == {
        "event": None,
        "pending": True,
        "timeout_at": timeout_at,
    }


def test_a_wait_past_its_timeout_completes_with_no_event() -> None:
    run = _run()
    run.pending["paid"] = Pending("paid", PendingKind.WAIT, NOW - 1, "order.paid", b"{}", NOW - 31)
    plan = suspensions.wait(run, "paid", event="order.paid", match={}, timeout_in=30, now=NOW)
    assert plan.complete == b"null" and plan.answer == suspensions.Answer(True, b'{"event":null}')


def test_an_event_found_by_look_back_completes_the_wait_without_fixing_it() -> None:
    run = _run()
    assert suspensions.looks_back(run, "paid", 600.0)
    assert not suspensions.looks_back(run, "paid", None)
    found = orjson.dumps(PAID, option=orjson.OPT_SORT_KEYS)
    plan = suspensions.wait(
        run, "paid", event="order.paid", match={}, timeout_in=None, now=NOW, looked_back=found
    )
    assert plan.fix is None and plan.suspend is None and plan.complete == found
    run.pending["paid"] = Pending("paid", PendingKind.WAIT, None, "order.paid", b"{}", NOW)
    assert not suspensions.looks_back(run, "paid", 600.0)  # only a first call looks back
