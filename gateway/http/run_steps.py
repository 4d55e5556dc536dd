"""The `steps` of the admin run view: each step with its tries and their durations.

Pure: shapes rows the store gave back; never reads the store itself. A completed step's
duration is the one its backend reported (`timing: "backend"`) when it sent one; else,
as for every failed try, what the gateway saw: the time from the previous thing the same
attempt did (its start, or its previous step record or error) to this record
(`timing: "gateway"`). Its `started_at` is the backend's, or null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from gateway.store import AttemptRow, StepErrorRow, StepRow

GATEWAY_TIMING: Final = "gateway"
"""`timing` of a duration derived from when the gateway saw the records."""
BACKEND_TIMING: Final = "backend"
"""`timing` of a duration the backend reported with the step."""


def steps_view(
    attempts: Sequence[AttemptRow], steps: Sequence[StepRow], errors: Sequence[StepErrorRow]
) -> list[dict[str, Any]]:
    """Completed steps in the order recorded, then steps that only ever failed, in the
    order of their first error; each with its errors in the order recorded.

    A completed step keeps `attempt`, `created_at`, `output_bytes` and `started_at` (the
    attempt that completed it, when, its size, when its backend says its work began); a
    step that never completed has them null.
    """
    step_times, error_times = _durations(attempts, steps, errors)
    view: dict[str, dict[str, Any]] = {}
    for step, took in zip(steps, step_times, strict=True):
        view[step.step_id] = {
            "step_id": step.step_id,
            "completed": True,
            "attempt": step.attempt,
            "created_at": step.created_at,
            "output_bytes": step.output_bytes,
            "started_at": step.started_at,
            **_timed(took, step.duration_ms),
            "errors": [],
        }
    for error, took in zip(errors, error_times, strict=True):
        entry = view.get(error.step_id)
        if entry is None:
            view[error.step_id] = entry = {
                "step_id": error.step_id,
                "completed": False,
                "attempt": None,
                "created_at": None,
                "output_bytes": None,
                "started_at": None,
                **_timed(None),
                "errors": [],
            }
        entry["errors"].append(
            {
                "attempt": error.attempt,
                "message": error.message,
                "created_at": error.created_at,
                **_timed(took),
            }
        )
    return list(view.values())


def _durations(
    attempts: Sequence[AttemptRow], steps: Sequence[StepRow], errors: Sequence[StepErrorRow]
) -> tuple[list[float | None], list[float | None]]:
    """Seconds from the previous record of the same attempt (or its start) to each step
    and each error, in their orders. None for an attempt's first record when its start
    is not known: the attempt is still running, or the process running it died.
    """
    started = {a.attempt: a.started_at for a in attempts}
    step_times: list[float | None] = [None] * len(steps)
    error_times: list[float | None] = [None] * len(errors)
    # (attempt, time, which list, index): sorted, each attempt's records in time order;
    # records at the same instant keep their order, steps before errors.
    records = [(s.attempt, s.created_at, 0, i) for i, s in enumerate(steps)]
    records += [(e.attempt, e.created_at, 1, i) for i, e in enumerate(errors)]
    records.sort()
    previous: float | None = None
    current: int | None = None
    for attempt, at, which, index in records:
        if attempt != current:
            current, previous = attempt, started.get(attempt)
        # Wall-clock times: a clock stepped back must not make a negative duration.
        took = None if previous is None else max(0.0, at - previous)
        (error_times if which else step_times)[index] = took
        previous = at
    return step_times, error_times


def _timed(seconds: float | None, reported_ms: float | None = None) -> dict[str, Any]:
    """A record's duration: the backend's when it reported one, else the gateway's."""
    if reported_ms is not None:
        return {"duration_ms": reported_ms, "timing": BACKEND_TIMING}
    if seconds is None:
        return {"duration_ms": None, "timing": None}
    return {"duration_ms": round(seconds * 1000, 3), "timing": GATEWAY_TIMING}
