"""Start-up recovery: claim the store's unfinished runs and drive each from its next attempt.

Runs whose backoff is still pending wait until it is due; suspended runs are left to the
scheduler, which takes them when due. Never runs before the sidecar listener is bound,
since a resumed attempt's backend calls it at once.
"""

from __future__ import annotations

import logging
import time

from gateway.engine.driver import Driver
from gateway.engine.scheduler import PAGE

log = logging.getLogger("gateway.engine.recovery")


async def recover(driver: Driver) -> int:
    """Resume every unfinished run this process may own; returns how many."""
    store = driver.store
    resumed = 0
    while True:
        rows = await store.claim_unfinished(
            driver.owner, time.time(), driver.lease, PAGE, steal=store.exclusive
        )
        for row in rows:
            if await driver.resume(row) is not None:
                resumed += 1
        if len(rows) < PAGE:
            break
    if resumed:
        log.info("recovered %d unfinished runs", resumed)
    return resumed
