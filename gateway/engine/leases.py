"""Lease renewal: keeps this process's claim on its unfinished runs alive in the store.

One UPDATE per period whatever the number of runs. If this process dies, its leases
expire and another node (or the next start) takes the runs over.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import StoreUnavailable
from gateway.store import Store

log = logging.getLogger("gateway.engine.leases")

LEASE_TTL = 30.0
"""Seconds a run's lease lasts unless renewed; another node may take the run after it."""


async def renew_forever(store: Store, owner: str, ttl: float) -> None:
    """Renew every `ttl / 3` seconds; a failed renewal is retried at the next period."""
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            await store.renew_leases(owner, time.time() + ttl)
        except StoreUnavailable as exc:
            log.warning("lease renewal failed: %s", exc)
