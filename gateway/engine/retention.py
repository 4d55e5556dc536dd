"""Retention: purges finished runs (steps, attempts, responses, idempotency keys) past age.

Works in small batches with a yield between them, so requests never queue behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import StoreUnavailable
from gateway.store import Store

log = logging.getLogger("gateway.engine.retention")

BATCH = 1000


async def purge_once(store: Store, retention: float, now: float) -> int:
    """Delete everything that finished before `now - retention`; returns runs deleted."""
    total = 0
    while True:
        deleted = await store.purge_before(now - retention, BATCH)
        total += deleted
        if deleted < BATCH:
            return total
        await asyncio.sleep(0)


async def purge_forever(store: Store, retention: float) -> None:
    """Purge every `min(retention / 4, 60 s)`."""
    interval = max(0.05, min(retention / 4, 60.0))
    while True:
        try:
            deleted = await purge_once(store, retention, time.time())
            if deleted:
                log.info("purged %d finished runs older than %.0fs", deleted, retention)
        except StoreUnavailable as exc:
            log.warning("retention purge failed: %s", exc)
        await asyncio.sleep(interval)
