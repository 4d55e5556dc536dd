"""This process's hold on its runs: lease renewal, fencing, and taking over the runs of
nodes that died or went silent.

One UPDATE per renewal whatever the number of runs. A node trusts its leases only up to
the local deadline its last renewal set: past it (a long pause, a partition) another
node may have taken its runs, so before it acknowledges a step or finishes an attempt it
renews and drops every run the store says another owner holds (`Driver.lose`). On a
shared store each node also looks every second for owners whose process is gone (their
presence ended with their database session) and takes their runs over at once, without
waiting for the leases to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway import metrics
from gateway.engine.driver import Driver
from gateway.engine.traces import trace_of
from gateway.errors import StoreUnavailable, Unavailable
from gateway.logs import Burst
from gateway.store import RunRow, RunStatus

log = logging.getLogger("gateway.engine.leases")

LOOK_EVERY = 1.0
"""Seconds between looks for dead nodes and expired leases on a shared store."""
PAGE = 500
_DRIVEN = frozenset({RunStatus.RUNNING, RunStatus.BACKOFF})
"""A run in memory in these states is leased to this node in the store, once stored;
in the others this node is not about to write its outcome."""


class Leases:
    """Renews, fences and takes over for one driver (one process start)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.store = driver.store
        self.cluster = driver.store.cluster
        self.ttl = driver.lease
        self.margin = min(1.0, self.ttl / 5)
        """Trust in a lease ends this much before it expires, for clocks that drift."""
        self.shared = not driver.store.exclusive
        """Other nodes may take runs: without them, this node owns all it drives."""
        self.valid_until = time.monotonic() + self.ttl - self.margin
        self._renewing: asyncio.Future[None] | None = None
        self._absent_before: set[str] = set()

    async def join(self) -> None:
        """Announce this node to the others sharing the store, and hear their notices."""
        await self.cluster.join(self.driver.owner, self.driver.heard)

    def fresh(self) -> bool:
        return not self.shared or time.monotonic() < self.valid_until

    async def confirm(self) -> None:
        """Return at once while the leases are trusted; else renew first (one renewal for
        every caller at once), dropping the runs lost meanwhile. Unavailable when the
        store cannot say: nothing may be acknowledged for a run this node may not own."""
        if self.fresh():
            return
        if self._renewing is None:
            self._renewing = asyncio.ensure_future(self._renew_once())
        renewing = self._renewing
        try:
            await asyncio.shield(renewing)
        except StoreUnavailable as exc:
            detail = f"this node cannot confirm its leases: {exc}"
            raise Unavailable(detail, retry_after=1) from None

    async def hold(self) -> None:
        """`confirm` for a run's own task, which has no client to answer 503: it waits
        until the store answers (if the run was lost meanwhile, `lose` cancels it)."""
        while True:
            try:
                return await self.confirm()
            except Unavailable:
                await asyncio.sleep(1.0)

    async def _renew_once(self) -> None:
        try:
            await self.renew()
        finally:
            self._renewing = None

    async def renew(self) -> None:
        """Extend every lease this node holds, then drop the runs another node took."""
        began = time.monotonic()
        owner = self.driver.owner
        await self.store.renew_leases(owner, time.time() + self.ttl)
        live = [lv.run.run_id for lv in self.driver.registry if lv.run.status in _DRIVEN]
        lost = await self.cluster.taken(owner, live) if live else []
        for run_id in lost:
            self.driver.lose(run_id)
        self.valid_until = began + self.ttl - self.margin

    async def renew_forever(self) -> None:
        """Renew every `ttl / 3` seconds; a failed renewal is retried at the next period."""
        trouble = Burst(log, "lease renewal")
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew()
            except StoreUnavailable as exc:
                trouble.failed(exc)
            else:
                trouble.ok()

    async def take_over_forever(self) -> None:
        """On a shared store: resume the runs of dead nodes and of expired leases."""
        trouble = Burst(log, "looking for runs to take over")
        while True:
            await asyncio.sleep(LOOK_EVERY)
            try:
                await self.take_over()
            except StoreUnavailable as exc:
                trouble.failed(exc)
            else:
                trouble.ok()

    async def take_over(self) -> int:
        """One look: an owner seen absent twice in a row (a second apart, so a node
        reconnecting after a database restart keeps its runs) is dead; its runs, and
        those whose lease expired, are resumed here. Returns how many."""
        driver, now = self.driver, time.time()
        absent = set(await self.cluster.absent(driver.owner, now))
        dead, self._absent_before = sorted(absent & self._absent_before), absent
        if dead:
            log.warning("nodes gone (their database sessions ended): %s", ", ".join(dead))
        owner, ttl = driver.owner, self.ttl
        resumed = 0
        if dead:
            resumed += await self._resume_all(
                "node_gone", lambda: self.cluster.take_over(owner, dead, now, ttl, PAGE)
            )
        return resumed + await self._resume_all(
            "lease_expired", lambda: self.store.claim_unfinished(owner, now, ttl, PAGE)
        )

    async def _resume_all(self, why: str, claim: Callable[[], Awaitable[list[RunRow]]]) -> int:
        """Claim a page at a time until a short page, resuming each run here."""
        resumed = 0
        while True:
            rows = await claim()
            for row in rows:
                log.info(
                    "taking over a run (%s)",
                    why.replace("_", " "),
                    extra=trace_of(row.run_id, row.request.headers).log,
                )
                metrics.TAKEN_OVER.labels(why).inc()
                resumed += await self.driver.resume(row) is not None
            if len(rows) < PAGE:
                return resumed
