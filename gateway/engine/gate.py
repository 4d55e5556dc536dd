"""Before each attempt: the upstream's circuit breaker and the route's retry budget may
hold it back. After it: the breaker is told how it went.

A held attempt waits in its run's task and is never dropped: its wake time and the
reason are on the live run, for the runs API and for delivery (hold or 303), and a
retry's stretched wake time is written to the store like any backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from gateway import metrics
from gateway.config import RetryPolicy
from gateway.engine.breaker import Admission, Breaker, Breakers
from gateway.engine.budget import Budgets
from gateway.engine.live import LiveRun
from gateway.engine.retries import AttemptOutcome, OutcomeKind
from gateway.engine.spans import Spans
from gateway.store import RunStatus, UpdateRun
from gateway.store.writer import Writer


class Waiting(StrEnum):
    """Why a run waits for its next attempt (the runs API's `waiting.reason`)."""

    BACKOFF = "backoff"
    RETRY_BUDGET = "retry_budget"
    CIRCUIT_OPEN = "circuit_open"


@dataclass(frozen=True, slots=True)
class Ticket:
    """An attempt let through: the breaker to tell how it went, if its upstream has one."""

    breaker: Breaker | None = None
    probe: bool = False


_FREE = Ticket()


def failed(outcome: AttemptOutcome, policy: RetryPolicy) -> bool:
    """A failure in the breaker's sense: a status in `retry.on`, a connect error, a timeout."""
    if outcome.kind is OutcomeKind.RESPONSE:
        return outcome.status in policy.on_status
    return True


class Gate:
    def __init__(
        self, writer: Writer, budgets: Budgets, breakers: Breakers, spans: Spans | None = None
    ) -> None:
        self.writer = writer
        self.spans = spans or Spans()
        """A wait here is a span of the run's trace."""
        self.budgets = budgets
        self.breakers = breakers
        """Both are looked up by route name at each attempt, so a reload that replaces
        them (`Budgets.apply`, `Breakers.apply`) takes effect at the next one."""
        self._rng = random.Random()

    async def enter(self, live: LiveRun, *, retry: bool) -> Ticket:
        """Wait until the attempt may go; `retry`: it retries a failed attempt, and
        spends from the route's budget (other attempts add to it)."""
        run = live.run
        route = run.route.name
        refusals = 0
        while True:
            now = time.time()
            breaker = self.breakers.get(route)
            ticket = _FREE
            if breaker is not None:
                admission = breaker.admit(now)
                if admission is Admission.HOLD:
                    await self._held(live, breaker, now)
                    continue
                ticket = Ticket(breaker, probe=admission is Admission.PROBE)
            budget = self.budgets.get(route)
            if budget is None or not retry:
                if budget is not None:
                    budget.fresh(now)
                break
            if budget.try_retry(now):
                break
            if ticket.probe:
                self.abandon(ticket)
            refusals += 1
            if refusals == 1:
                metrics.child(metrics.BUDGET_DEFERRED, route).inc()
            delay = budget.stretch(refusals, self._rng)
            waiting = metrics.child(metrics.BUDGET_WAITING, route)
            with self._showing(live, Waiting.RETRY_BUDGET, now + delay, waiting):
                await asyncio.sleep(delay)
        if live.waiting is not None:
            live.waiting = None
            if run.status is not RunStatus.BACKOFF:  # a retry's wake time goes with its attempt
                run.wake_at = None
            live.notify()
        return ticket

    def settle(self, ticket: Ticket, live: LiveRun, outcome: AttemptOutcome) -> None:
        """The attempt ended: tell its upstream's breaker (a suspension is a success)."""
        breaker = ticket.breaker
        if breaker is None:
            return
        run = live.run
        bad = run.suspension is None and failed(outcome, run.route.settings.retry)
        breaker.record(bad, probe=ticket.probe, now=time.time())

    @staticmethod
    def abandon(ticket: Ticket) -> None:
        """The attempt was not sent after all: a probe's turn passes to another."""
        if ticket.probe and ticket.breaker is not None:
            ticket.breaker.abandon(time.time())

    async def _held(self, live: LiveRun, breaker: Breaker, now: float) -> None:
        """Wait while the breaker is open: until it changes or the next probe is due
        (a little after, spread, so that held attempts do not all ask at once)."""
        until = breaker.look_again_at(now)
        spread = self._rng.uniform(0.0, min(0.5, breaker.config.interval / 10))
        held = metrics.CIRCUIT_HELD.labels(breaker.origin)
        with self._showing(live, Waiting.CIRCUIT_OPEN, until, held):
            try:
                async with asyncio.timeout(max(0.0, until + spread - time.time())):
                    await breaker.changed.wait()
            except TimeoutError:
                pass

    @contextlib.contextmanager
    def _showing(
        self, live: LiveRun, reason: Waiting, until: float, gauge: metrics.Value
    ) -> Iterator[None]:
        """Show the run waiting for `reason` until `until` while the block waits, and
        store a retry's new wake time, so a restart resumes it no earlier."""
        run = live.run
        live.waiting, run.wake_at = reason, until
        if run.status is RunStatus.BACKOFF:
            self.writer.post(UpdateRun(run.run_id, run.status, run.attempt, until, time.time()))
        live.notify()
        gauge.inc()
        start = time.time()
        try:
            yield
        finally:
            gauge.dec()
            name = reason.value.replace("_", " ")
            self.spans.waited(run, name, start, time.time(), waiting=reason.value)
