"""Start-up recovery: claim the store's unfinished runs and drive each from its next attempt.

Runs whose backoff is still pending wait until it is due. Never runs before the sidecar
listener is bound, since a resumed attempt's backend calls it at once.
"""

from __future__ import annotations

import logging
import time

from gateway.config import RouteConfig
from gateway.driver import LEASE_TTL, Driver
from gateway.runs import Run, RunStatus
from gateway.store import Store

log = logging.getLogger("gateway.recovery")

PAGE = 500


async def recover(driver: Driver, store: Store, routes: tuple[RouteConfig, ...]) -> int:
    """Resume every unfinished run this process may own; returns how many."""
    by_name = {route.name: route for route in routes}
    resumed = skipped = 0
    while True:
        rows = await store.claim_unfinished(
            driver.node_id, time.time(), LEASE_TTL, PAGE, steal=store.exclusive
        )
        for row in rows:
            route = by_name.get(row.route)
            if route is None or not route.durable:
                skipped += 1
                log.warning(
                    "run of route %r left unfinished: the route is no longer configured",
                    row.route,
                    extra={"run_id": row.run_id},
                )
                continue
            steps = await store.load_steps(row.run_id)
            run = Run(
                row.run_id,
                route,
                row.request,
                row.created_at,
                attempt=row.attempt,
                status=RunStatus.BACKOFF if row.wake_at else RunStatus.RUNNING,
                wake_at=row.wake_at,
                steps=steps,
                state_bytes=sum(len(v) for v in steps.values()),
            )
            driver.adopt(run)
            resumed += 1
        if len(rows) < PAGE:
            break
    if resumed or skipped:
        log.info("recovered %d unfinished runs (%d left for a missing route)", resumed, skipped)
    return resumed
