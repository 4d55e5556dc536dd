"""Durable timers: re-invokes suspended runs when they are due, reading them by due time.

Nothing is kept per timer in memory: the store's index on wake time gives the earliest
one, the scheduler sleeps until then (or until poked by a new suspension or an event),
then claims what is due, a page at a time, and hands each run to the driver.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.engine.driver import Driver
from gateway.errors import StoreUnavailable
from gateway.logs import Burst
from gateway.store import FullStore

log = logging.getLogger("gateway.engine.scheduler")

PAGE = 500
IDLE = 5.0
"""Longest sleep without a known timer: other nodes may add timers to a shared store."""


class Scheduler:
    def __init__(self, store: FullStore, driver: Driver) -> None:
        self.store = store
        self.driver = driver

    async def run_forever(self) -> None:
        trouble = Burst(log, "reading timers")
        while True:
            self.driver.timers_changed.clear()
            try:
                delay = await self._fire_due()
            except StoreUnavailable as exc:
                trouble.failed(exc)
                delay = 1.0
            else:
                trouble.ok()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self.driver.timers_changed.wait()
                except TimeoutError:
                    pass

    async def _fire_due(self) -> float:
        """Claim and resume every due run; the seconds until the next one (capped)."""
        while True:
            rows = await self.store.claim_due(
                self.driver.owner, time.time(), self.driver.lease, PAGE
            )
            for row in rows:
                await self.driver.resume(row)
            if len(rows) < PAGE:
                break
        next_at = await self.store.next_wake_at()
        if next_at is None:
            return IDLE
        return min(IDLE, max(0.0, next_at - time.time()))
