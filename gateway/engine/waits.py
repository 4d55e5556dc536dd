"""Completing event waits in the store: where an event ends a run's wait.

The store completes a wait in one transaction (the step stored, the pending row gone, a
suspended run made due), so two events never both complete one wait. The driver mirrors
a completion into the live run, if it has one.
"""

from __future__ import annotations

from gateway.engine.runs import PendingKind, Run
from gateway.engine.suspensions import first_match, stored_events
from gateway.store import SuspensionStore


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
