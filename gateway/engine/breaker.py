"""Circuit breakers: one per upstream origin, holding its attempts while it keeps failing.

The state machine is pure (`now` comes from the caller); the runner asks it before each
attempt and tells it each attempt's outcome. Held attempts wait on `changed` or until
the next probe, and are never dropped. State is per node and in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from enum import Enum, IntEnum
from typing import final

from gateway import metrics
from gateway.config import CircuitBreakerConfig, RouteConfig

log = logging.getLogger("gateway.engine.breaker")


class State(IntEnum):
    """The values `durable_circuit_state` exports."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    """Open, with its probe in flight."""


class Admission(Enum):
    PASS = "pass"
    PROBE = "probe"
    """Let through as the one probe of an open breaker: report its outcome."""
    HOLD = "hold"


@final
class Breaker:
    """After `failures` failed attempts in a row the breaker opens: attempts are held, and
    one probe goes through per `interval`. The probe's success closes it; its failure
    keeps it open for another interval.

    While it is open only the probe's outcome counts: attempts let through before it
    opened may still end either way, and say nothing about the upstream now.
    """

    __slots__ = ("origin", "config", "state", "failures", "next_probe_at", "changed")

    def __init__(self, origin: str, config: CircuitBreakerConfig) -> None:
        self.origin = origin
        self.config = config
        self.state = State.CLOSED
        self.failures = 0
        """Failed attempts in a row, while closed."""
        self.next_probe_at = 0.0
        """While open: when the next probe may go."""
        self.changed = asyncio.Event()
        """Set (and replaced) at each change of state: held attempts wait on it."""
        self._export()

    def admit(self, now: float) -> Admission:
        """May an attempt go to the upstream now?"""
        if self.state is State.CLOSED:
            return Admission.PASS
        if self.state is State.OPEN and now >= self.next_probe_at:
            self._set(State.HALF_OPEN)
            return Admission.PROBE
        return Admission.HOLD

    def look_again_at(self, now: float) -> float:
        """When a held attempt should ask again, unless the state changes first."""
        if self.state is State.OPEN:
            return self.next_probe_at
        return now + self.config.interval  # the probe's outcome will tell

    def record(self, failed: bool, *, probe: bool, now: float) -> None:
        """An attempt admitted with `admit` ended; `failed`: a retriable failure."""
        if probe:
            if failed:
                self.next_probe_at = now + self.config.interval
                self._set(State.OPEN)
            else:
                self.failures = 0
                self._set(State.CLOSED)
                log.info("circuit to %s closed: a probe succeeded", self.origin)
            return
        if self.state is not State.CLOSED:
            return
        if not failed:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.config.failures:
            self.next_probe_at = now + self.config.interval
            self._set(State.OPEN)
            metrics.child(metrics.CIRCUIT_OPENED, self.origin).inc()
            log.warning(
                "circuit to %s opened after %d failures in a row: holding its attempts,"
                " one probe every %gs",
                self.origin,
                self.failures,
                self.config.interval,
            )

    def abandon(self, now: float) -> None:
        """The probe was not sent after all (cancelled, or refused by the retry budget):
        another attempt may probe at once."""
        if self.state is State.HALF_OPEN:
            self.next_probe_at = now
            self._set(State.OPEN)

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """New settings, keeping the state: a pending probe keeps its time."""
        self.config = config
        self._wake()

    def retire(self) -> None:
        """No route uses the breaker any more: wake what it holds, to look again."""
        self.state = State.CLOSED
        self._wake()
        for family in (metrics.CIRCUIT_STATE, metrics.CIRCUIT_HELD):
            family.series.pop((self.origin,), None)

    def _set(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self._export()
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _export(self) -> None:
        # Not `metrics.child`, whose cache would outlive a series dropped by `retire`.
        metrics.CIRCUIT_STATE.labels(self.origin).set(self.state.value)


class Breakers:
    """The upstreams' breakers, reached by route name; kept across a configuration
    reload (`apply`), so an open breaker stays open."""

    def __init__(self, routes: Iterable[RouteConfig] = ()) -> None:
        self._by_origin: dict[str, Breaker] = {}
        self._by_route: dict[str, Breaker] = {}
        self.apply(routes)

    def get(self, route: str) -> Breaker | None:
        return self._by_route.get(route)

    def apply(self, routes: Iterable[RouteConfig]) -> None:
        """Breakers for these routes' upstreams (the loader made routes to one origin
        agree on the settings): one per origin, kept with its state when still used."""
        old = self._by_origin
        by_origin: dict[str, Breaker] = {}
        by_route: dict[str, Breaker] = {}
        for route in routes:
            config = route.settings.circuit_breaker
            if not route.durable or config is None:
                continue
            origin = route.origin
            breaker = by_origin.get(origin)
            if breaker is None:
                breaker = old.get(origin)
                if breaker is None:
                    breaker = Breaker(origin, config)
                elif breaker.config != config:
                    breaker.reconfigure(config)
                by_origin[origin] = breaker
            by_route[route.name] = breaker
        for origin, breaker in old.items():
            if origin not in by_origin:
                breaker.retire()
        self._by_origin, self._by_route = by_origin, by_route
