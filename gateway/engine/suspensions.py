"""Durable sleep and wait-for-event on a live run, as the sidecar reports them.

The first call for a step fixes its timer (and, for a wait, its event and match) for
every later attempt; a call answers `done` once it is over, or marks the current
attempt as suspending. Changes runs only through the driver, which owns them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.engine.live import LiveRun
from gateway.engine.runs import Pending, PendingKind
from gateway.errors import BadRequest
from gateway.store import DropPending, EventRow, FullStore, PutPending
from step_protocol import wire

if TYPE_CHECKING:  # the driver calls in here; only its type is needed
    from gateway.engine.driver import Driver

_SORTED = orjson.OPT_SORT_KEYS


@dataclass(frozen=True, slots=True)
class Answer:
    done: bool
    """True: 200, the step is over; False: 202, the attempt must end and the run suspend."""
    body: bytes


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


def sleep(
    driver: Driver, run_id: str, attempt: int, step_id: str, wake_at: float, now: float
) -> Answer:
    live = driver.current(run_id, attempt)
    run = live.run
    done = run.steps.get(step_id)
    if done is not None:
        return Answer(True, done)
    pending = _fix(driver, live, Pending(step_id, PendingKind.SLEEP, wake_at, created_at=now))
    assert pending.wake_at is not None
    if pending.wake_at <= now:
        output = orjson.dumps(
            {"done": True, "wake_at": wire.format_timestamp(pending.wake_at)}, option=_SORTED
        )
        _complete(driver, live, step_id, output)
        return Answer(True, output)
    run.suspension = pending
    return Answer(
        False, orjson.dumps({"done": False, "wake_at": wire.format_timestamp(pending.wake_at)})
    )


async def wait(
    driver: Driver,
    store: FullStore,
    run_id: str,
    attempt: int,
    step_id: str,
    *,
    event: str,
    match: Mapping[str, Any],
    timeout_in: float | None,
    lookback: float | None,
    now: float,
) -> Answer:
    live = driver.current(run_id, attempt)
    done = live.run.steps.get(step_id)
    if done is not None:
        return Answer(True, b'{"event":' + done + b"}")
    if step_id not in live.run.pending and lookback:
        rows = await store.events_since(event, now - lookback)
        output = first_match(match, stored_events(rows))
        if output is not None:
            live = driver.current(run_id, attempt)  # still ours after the read?
            _complete(driver, live, step_id, output)
            return Answer(True, b'{"event":' + output + b"}")
    deadline = None if timeout_in is None else now + timeout_in
    wanted = Pending(
        step_id, PendingKind.WAIT, deadline, event, orjson.dumps(match, option=_SORTED), now
    )
    pending = _fix(driver, live, wanted)
    if pending.wake_at is not None and pending.wake_at <= now:
        _complete(driver, live, step_id, b"null")
        return Answer(True, b'{"event":null}')
    live.run.suspension = pending
    timeout_at = None if pending.wake_at is None else wire.format_timestamp(pending.wake_at)
    return Answer(False, orjson.dumps({"event": None, "pending": True, "timeout_at": timeout_at}))


def _fix(driver: Driver, live: LiveRun, wanted: Pending) -> Pending:
    """The step's pending sleep or wait: the first call's, stored once."""
    run = live.run
    pending = run.pending.get(wanted.step_id)
    if pending is None:
        run.pending[wanted.step_id] = pending = wanted
        driver.writer.post(
            PutPending(
                run.run_id,
                wanted.step_id,
                wanted.kind.value,
                wanted.wake_at,
                wanted.event,
                wanted.match,
                wanted.created_at,
            )
        )
    elif pending.kind is not wanted.kind:
        raise BadRequest(
            f"step {wanted.step_id!r} is a {pending.kind.value}, not a {wanted.kind.value}",
            run_id=run.run_id,
        )
    return pending


def _complete(driver: Driver, live: LiveRun, step_id: str, output: bytes) -> None:
    live.run.pending.pop(step_id, None)
    driver.record_step(live, step_id, output)
    driver.writer.post(DropPending(live.run.run_id, step_id))


async def missed_event(driver: Driver, live: LiveRun) -> bool:
    """Complete a wait with an event that came while its run was still running.

    `POST /v1/events` only wakes runs already suspended in the store; an event that
    arrived between the wait's first call and the suspension's commit is found here.
    """
    run = live.run
    for pending in list(run.pending.values()):
        if pending.kind is not PendingKind.WAIT or pending.event is None:
            continue
        rows = await driver.store.events_since(pending.event, pending.created_at)
        output = first_match(pending.match, stored_events(rows))
        # A refused completion (the wait is gone or its step done) stays refused for
        # every later event as well: go on to the run's next wait.
        if output is not None and await driver.store.complete_wait(
            run.run_id, pending.step_id, output, time.time()
        ):
            driver.wait_completed(run.run_id, pending.step_id, output)
            return True
    return False
