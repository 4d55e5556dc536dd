"""Durable sleep and wait-for-event, decided over a run: pure, no I/O and no clock.

The first call for a step fixes its timer (and, for a wait, its event and match) for
every later attempt; a call answers `done` once it is over, or tells the current attempt
to suspend. The driver applies the `Plan` these return; nothing here changes a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.engine.runs import Pending, PendingKind, Run
from gateway.errors import BadRequest
from gateway.store import EventRow
from step_protocol import wire

_SORTED = orjson.OPT_SORT_KEYS


@dataclass(frozen=True, slots=True)
class Answer:
    done: bool
    """True: 200, the step is over; False: 202, the attempt must end and the run suspend."""
    body: bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """What one sleep or wait call does to its run, in this order, and what it answers."""

    step_id: str
    answer: Answer
    fix: Pending | None = None
    """The step's first call: its sleep or wait, to keep (and store) for every attempt."""
    complete: bytes | None = None
    """The step is over now: its output, to record as the step's result."""
    suspend: Pending | None = None
    """The attempt must end and the run suspend on this."""


def first_match(
    match: Mapping[str, Any] | bytes | None, events: Iterable[Mapping[str, Any]]
) -> bytes | None:
    """The first event (`wire.event_output` shape) that a wait's `match` fits, as the
    canonical JSON that completes the wait; None when none does.

    `match` is the wait's own mapping or its stored canonical JSON (None or empty: any).
    """
    criteria = match if isinstance(match, Mapping) else orjson.loads(match) if match else None
    for event in events:
        if wire.event_matches(criteria, event):
            return orjson.dumps(event, option=_SORTED)
    return None


def stored_events(rows: Iterable[EventRow]) -> Iterable[dict[str, Any]]:
    """Stored events as a wait sees them, decoded one at a time (a match stops early)."""
    return (wire.event_output(r.event_id, r.name, orjson.loads(r.data), r.ts) for r in rows)


def _completed_as(kind: PendingKind, output: bytes) -> bool:
    """Whether a completed step's output is what a sleep (or a wait) completes with: a
    sleep's `{"done": true, "wake_at": …}`, a wait's event object or null. A step
    completed by a `PUT` of anything else is not one, and must not answer as one."""
    value = orjson.loads(output)
    if kind is PendingKind.WAIT and value is None:
        return True
    if not isinstance(value, dict):
        return False
    if kind is PendingKind.SLEEP:
        fields: tuple[tuple[str, type], ...] = (("done", bool), ("wake_at", str))
    else:
        fields = (("name", str), ("id", str), ("data", dict), ("ts", str))
    if not all(isinstance(value.get(name), of) for name, of in fields):
        return False
    try:
        wire.parse_timestamp(value["wake_at" if kind is PendingKind.SLEEP else "ts"])
    except ValueError:
        return False
    return kind is PendingKind.WAIT or value["done"] is True


def _done(run: Run, step_id: str, kind: PendingKind) -> bytes | None:
    """The step's output when it is completed, as a step of this kind; 400 when it was
    completed otherwise (SPEC §4.7: one id names one thing)."""
    done = run.steps.get(step_id)
    if done is not None and not _completed_as(kind, done):
        raise BadRequest(
            f"step {step_id!r} was completed otherwise, not as a {kind.value}", run_id=run.run_id
        )
    return done


def sleep(run: Run, step_id: str, wake_at: float, now: float) -> Plan:
    done = _done(run, step_id, PendingKind.SLEEP)
    if done is not None:
        return Plan(step_id, Answer(True, done))
    wanted = Pending(step_id, PendingKind.SLEEP, wake_at, created_at=now)
    pending, fix = _fixed(run, wanted)
    assert pending.wake_at is not None
    if pending.wake_at <= now:
        output = orjson.dumps(
            {"done": True, "wake_at": wire.format_timestamp(pending.wake_at)}, option=_SORTED
        )
        return Plan(step_id, Answer(True, output), fix=fix, complete=output)
    body = orjson.dumps({"done": False, "wake_at": wire.format_timestamp(pending.wake_at)})
    return Plan(step_id, Answer(False, body), fix=fix, suspend=pending)


def looks_back(run: Run, step_id: str, lookback: float | None) -> bool:
    """True when a wait's first call must first search the stored events (`lookback`)."""
    return bool(lookback) and step_id not in run.steps and step_id not in run.pending


def wait(
    run: Run,
    step_id: str,
    *,
    event: str,
    match: Mapping[str, Any],
    timeout_in: float | None,
    now: float,
    looked_back: bytes | None = None,
) -> Plan:
    """`looked_back`: the stored event that a first call's look-back found, if any."""
    done = _done(run, step_id, PendingKind.WAIT)
    if done is not None:
        return Plan(step_id, Answer(True, b'{"event":' + done + b"}"))
    if looked_back is not None:
        return Plan(step_id, Answer(True, b'{"event":' + looked_back + b"}"), complete=looked_back)
    deadline = None if timeout_in is None else now + timeout_in
    wanted = Pending(step_id, PendingKind.WAIT, deadline, event, wire.canonical_json(match), now)
    pending, fix = _fixed(run, wanted)
    if pending.wake_at is not None and pending.wake_at <= now:
        return Plan(step_id, Answer(True, b'{"event":null}'), fix=fix, complete=b"null")
    timeout_at = None if pending.wake_at is None else wire.format_timestamp(pending.wake_at)
    body = orjson.dumps({"event": None, "pending": True, "timeout_at": timeout_at})
    return Plan(step_id, Answer(False, body), fix=fix, suspend=pending)


def _fixed(run: Run, wanted: Pending) -> tuple[Pending, Pending | None]:
    """The step's pending sleep or wait (the first call's), and `wanted` when it is that
    first call, to be kept."""
    pending = run.pending.get(wanted.step_id)
    if pending is None:
        return wanted, wanted
    if pending.kind is not wanted.kind:
        raise BadRequest(
            f"step {wanted.step_id!r} is a {pending.kind.value}, not a {wanted.kind.value}",
            run_id=run.run_id,
        )
    return pending, None
