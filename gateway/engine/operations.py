"""Operator actions on runs from the admin API: cancel and retry, applied through the driver.

Never changes a run the driver is attempting except by cancelling its task first.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway import metrics
from gateway.engine.driver import Driver
from gateway.engine.runs import Run, stored_problem
from gateway.errors import Conflict, NotFound
from gateway.store import CancelRun, ResetRun
from gateway.store.records import FINAL_STATUSES, RunStatus

log = logging.getLogger("gateway.engine.operations")


async def cancel(driver: Driver, run_id: str, row_status: str | None) -> None:
    """Cancel an unfinished run: its result becomes a 409 problem, its timers and waits go.

    `row_status` is the store's status when the run is not live here.
    """
    live = driver.get(run_id)
    status = live.run.status.value if live is not None else row_status
    if status is None:
        raise NotFound("no such run", run_id=run_id)
    if status in FINAL_STATUSES:
        raise Conflict(f"the run is already {status}", run_id=run_id)
    response = stored_problem(
        run_id, 409, "run-cancelled", "Run cancelled", "an operator cancelled this run"
    )
    committed = driver.writer.submit(CancelRun(run_id, response, time.time()))
    if live is not None:
        if live.task is not None and not live.task.done():
            live.task.cancel()
        run = live.run
        run.status, run.response, run.wake_at = RunStatus.CANCELLED, response, None
        run.pending.clear()
        live.final_commit = committed
        committed.add_done_callback(lambda _: driver.forget(run_id))
        live.notify()
    await asyncio.shield(committed)
    route = live.run.route.name if live is not None else "unknown"
    metrics.child(metrics.RUNS, route, RunStatus.CANCELLED.value).inc()
    log.info("cancelled by an operator", extra={"run_id": run_id})


async def retry(driver: Driver, run: Run) -> None:
    """Run a failed, cancelled or paused run again from its completed steps (a new attempt)."""
    live = driver.get(run.run_id)
    if live is not None and not live.run.finished and live.run.status is not RunStatus.PAUSED:
        raise Conflict(f"the run is {live.run.status.value}, not failed", run_id=run.run_id)
    if live is not None:
        driver.forget(run.run_id)
    await driver.writer.submit(ResetRun(run.run_id, run.attempt, time.time()))
    run.status, run.response = RunStatus.RUNNING, None
    driver.adopt(run)
    log.info("retried by an operator", extra={"run_id": run.run_id})
