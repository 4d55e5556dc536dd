"""Durable timers: re-invokes suspended runs when they are due, reading them by due time.

Nothing is kept per timer in memory: the store's index on wake time gives the earliest
one, the scheduler sleeps until then (or until poked by a new suspension or an event),
then claims what is due, a page at a time, and hands each run to the driver.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.config import RouteConfig
from gateway.engine.driver import LEASE_TTL, Driver
from gateway.engine.runs import Pending, PendingKind, Run
from gateway.errors import StoreUnavailable
from gateway.store import FullStore, RunRow
from gateway.store.records import RunStatus

log = logging.getLogger("gateway.engine.scheduler")

PAGE = 500
IDLE = 5.0
"""Longest sleep without a known timer: other nodes may add timers to a shared store."""


class Scheduler:
    def __init__(self, store: FullStore, driver: Driver, routes: tuple[RouteConfig, ...]) -> None:
        self.store = store
        self.driver = driver
        self.routes = {route.name: route for route in routes}
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Re-read the earliest timer now (a suspension or an event may have moved it)."""
        self._poke.set()

    async def run_forever(self) -> None:
        while True:
            self._poke.clear()
            try:
                delay = await self._fire_due()
            except StoreUnavailable as exc:
                log.warning("scheduler cannot read timers: %s", exc)
                delay = 1.0
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._poke.wait()
                except TimeoutError:
                    pass

    async def _fire_due(self) -> float:
        """Claim and resume every due run; the seconds until the next one (capped)."""
        while True:
            rows = await self.store.claim_due(self.driver.node_id, time.time(), LEASE_TTL, PAGE)
            for row in rows:
                await self.resume(row)
            if len(rows) < PAGE:
                break
        next_at = await self.store.next_wake_at()
        if next_at is None:
            return IDLE
        return min(IDLE, max(0.0, next_at - time.time()))

    async def resume(self, row: RunRow) -> None:
        """Hand a run taken from the store to the driver, with its steps and pending calls."""
        route = self.routes.get(row.route)
        if route is None or not route.durable:
            log.warning(
                "run of route %r not resumed: the route is no longer configured",
                row.route,
                extra={"run_id": row.run_id},
            )
            return
        steps = await self.store.load_steps(row.run_id)
        pending = {
            p.step_id: Pending(
                p.step_id, PendingKind(p.kind), p.wake_at, p.event, p.match, p.created_at
            )
            for p in await self.store.list_pending(row.run_id)
        }
        run = Run(
            row.run_id,
            route,
            row.request,
            row.created_at,
            attempt=row.attempt,
            status=RunStatus(row.status),
            wake_at=row.wake_at,
            steps=steps,
            pending=pending,
            suspends=await self.store.count_suspends(row.run_id),
        )
        self.driver.adopt(run)
