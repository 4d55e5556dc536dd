"""Completing event waits in the store: where an event ends a run's wait.

The store completes a wait in one transaction (the step stored, the pending row gone, a
suspended run made due), so two events never both complete one wait, and storing an
event completes the waits it matches in that same transaction, so a stored event has
always woken its runs, even if the gateway dies before it answers. The driver mirrors a
completion into the live run, if it has one.
"""

from __future__ import annotations

import os
import signal
from typing import Final

from gateway.engine.runs import PendingKind, Run
from gateway.engine.suspensions import first_match, stored_events
from gateway.store import AddedEvent, SuspensionStore
from gateway.store.writer import Writer

TEST_CRASH_ENV: Final = "DURABLE_TEST_CRASH_AFTER_EVENT"
"""Test-only fault point: `1` kills the process (SIGKILL) right after an event's
transaction commits, before the engine hears of it or the sender gets an answer.
Never set it in production."""
_CRASH_AFTER_EVENT: Final = os.environ.get(TEST_CRASH_ENV, "") == "1"


async def deliver(
    store: SuspensionStore, writer: Writer, event_id: str, name: str, data: bytes, now: float
) -> AddedEvent:
    """Store an event and complete every wait it matches, in one transaction."""
    await writer.flush()  # every wait registered before now is in the store
    added = await store.add_event(event_id, name, data, now)
    if _CRASH_AFTER_EVENT:
        os.kill(os.getpid(), signal.SIGKILL)
    return added


async def missed(store: SuspensionStore, run: Run, now: float) -> tuple[str, bytes] | None:
    """Complete a wait with an event that came while its run was still running: (step id,
    output), or None.

    `POST /v1/events` only wakes runs whose waits are in the store; an event that arrived
    between a wait's first call and its run's suspension commit is found here, after it.
    """
    for pending in list(run.pending.values()):
        if pending.kind is not PendingKind.WAIT or pending.event is None:
            continue
        rows = await store.events_since(pending.event, pending.created_at)
        output = first_match(pending.match, stored_events(rows))
        # A refused completion (the wait is gone or its step done) stays refused for
        # every later event as well: go on to the run's next wait.
        if output is not None and await store.complete_wait(
            run.run_id, pending.step_id, output, now
        ):
            return pending.step_id, output
    return None
