"""The admin run view's steps: tries per step, and the durations the gateway derives."""

from __future__ import annotations

from typing import Any

from gateway.http.run_steps import steps_view
from gateway.store import AttemptRow, StepErrorRow, StepRow


def attempt(n: int, started: float, ended: float, status: int = 200) -> AttemptRow:
    return AttemptRow(n, started, ended, "response", status, None)


def durations(view: list[dict[str, Any]]) -> dict[str, float | None]:
    """step id → its duration, and `id@attempt` → each error's duration."""
    out: dict[str, float | None] = {}
    for step in view:
        out[str(step["step_id"])] = step["duration_ms"]
        for err in step["errors"]:
            out[f"{step['step_id']}@{err['attempt']}"] = err["duration_ms"]
    return out


def test_a_step_that_failed_then_completed_lists_both_tries() -> None:
    view = steps_view(
        [attempt(1, 10.0, 10.5, 500), attempt(2, 11.0, 11.4)],
        [StepRow("quote", 1, 10.1, 12), StepRow("charge", 2, 11.3, 7)],
        [StepErrorRow("charge", 1, "card declined", 10.35)],
    )

    assert view == [
        {
            "step_id": "quote",
            "completed": True,
            "attempt": 1,
            "created_at": 10.1,
            "output_bytes": 12,
            "started_at": None,
            "duration_ms": 100.0,
            "timing": "gateway",
            "errors": [],
        },
        {
            "step_id": "charge",
            "completed": True,
            "attempt": 2,
            "created_at": 11.3,
            "output_bytes": 7,
            "started_at": None,
            "duration_ms": 300.0,  # from attempt 2's start: quote came back memoized
            "timing": "gateway",
            "errors": [
                {
                    "attempt": 1,
                    "message": "card declined",
                    "created_at": 10.35,
                    "duration_ms": 250.0,  # from quote, the attempt's previous record
                    "timing": "gateway",
                }
            ],
        },
    ]


def test_steps_that_only_failed_come_after_the_completed_ones() -> None:
    view = steps_view(
        [attempt(1, 0.0, 1.0, 500), attempt(2, 2.0, 3.0, 500)],
        [StepRow("a", 1, 0.5, 1)],
        [
            StepErrorRow("b", 1, "x", 0.2),
            StepErrorRow("c", 1, "y", 0.75),
            StepErrorRow("b", 2, "z", 2.5),
        ],
    )

    assert [(s["step_id"], s["completed"]) for s in view] == [
        ("a", True),
        ("b", False),
        ("c", False),
    ]
    b = view[1]
    assert (b["attempt"], b["created_at"], b["output_bytes"], b["started_at"]) == (
        None,
        None,
        None,
        None,
    )
    assert [(e["attempt"], e["message"]) for e in b["errors"]] == [(1, "x"), (2, "z")]
    # Each record's duration runs from the same attempt's previous record, in time order.
    assert durations(view) == {
        "a": 300.0,
        "b": None,
        "b@1": 200.0,
        "b@2": 500.0,
        "c": None,
        "c@1": 250.0,
    }


def test_an_attempt_without_a_start_times_only_its_later_records() -> None:
    # No attempt row: attempt 2 is still running (or its process died).
    view = steps_view(
        [attempt(1, 0.0, 1.0, 500)],
        [StepRow("a", 2, 5.0, 1), StepRow("b", 2, 5.25, 1)],
        [],
    )

    assert durations(view) == {"a": None, "b": 250.0}
    assert view[0]["timing"] is None and view[1]["timing"] == "gateway"


def test_a_clock_stepped_back_gives_zero_not_a_negative_duration() -> None:
    view = steps_view([attempt(1, 10.0, 11.0)], [StepRow("a", 1, 9.5, 1)], [])

    assert durations(view) == {"a": 0.0}


def test_no_steps_no_errors() -> None:
    assert steps_view([attempt(1, 0.0, 1.0)], [], []) == []


def test_a_backends_timing_wins_over_what_the_gateway_saw() -> None:
    view = steps_view(
        [attempt(1, 10.0, 12.0)],
        [
            StepRow("timed", 1, 10.5, 1, started_at=10.1, duration_ms=350.25),
            StepRow("started", 1, 11.0, 1, started_at=10.9),
            StepRow("plain", 1, 11.25, 1),
        ],
        [StepErrorRow("timed", 1, "flaky", 10.25)],
    )

    timed, started, plain = view
    assert (timed["started_at"], timed["duration_ms"], timed["timing"]) == (10.1, 350.25, "backend")
    # Only a start: the duration is still the gateway's, from the previous record.
    assert (started["started_at"], started["duration_ms"], started["timing"]) == (
        10.9,
        500.0,
        "gateway",
    )
    assert (plain["started_at"], plain["duration_ms"], plain["timing"]) == (None, 250.0, "gateway")
    # A failed try stores no timing of its own: the gateway's, from the attempt's start.
    assert timed["errors"][0]["duration_ms"] == 250.0
    assert timed["errors"][0]["timing"] == "gateway"
