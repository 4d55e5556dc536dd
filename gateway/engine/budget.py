"""Retry budgets: how many retries a route may send now, counted over a sliding window.

Pure (`now` and `rng` come from the caller). A retry the budget refuses is never dropped:
the runner stretches its backoff (`stretch`) and asks again, so the run waits, durably.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Final, final

from gateway.config import RetryBudget, RouteConfig

SLOTS: Final = 10
"""The window is counted in this many slots: memory per route is fixed, whatever the rate."""


@final
class Budget:
    """One route's budget: retries in the last `interval` stay within
    max(ratio × other attempts in it, min_per_second × interval).

    "Other attempts" are the attempts that are not retries: a run's first, and one after
    a durable sleep or wait. Counting those rather than all requests in flight (Envoy's
    way) holds a failing upstream's retries to the ratio even when its failures are fast,
    which a count of concurrent retries would barely see.
    """

    __slots__ = ("config", "_width", "_epochs", "_fresh", "_retries")

    def __init__(self, config: RetryBudget) -> None:
        self.config = config
        self._width = config.interval / SLOTS
        self._epochs = [-1] * SLOTS
        """Which slot-width period of time each slot counts now (-1: none yet)."""
        self._fresh = [0] * SLOTS
        self._retries = [0] * SLOTS

    def _slot(self, now: float) -> int:
        """The slot for `now`, emptied first when it last counted an older period."""
        epoch = math.floor(now / self._width)
        index = epoch % SLOTS
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._fresh[index] = self._retries[index] = 0
        return index

    def _totals(self, now: float) -> tuple[int, int]:
        """Attempts that were not retries, and retries, counted in the window at `now`."""
        oldest = math.floor(now / self._width) - SLOTS + 1
        fresh = retries = 0
        for i, epoch in enumerate(self._epochs):
            if epoch >= oldest:
                fresh += self._fresh[i]
                retries += self._retries[i]
        return fresh, retries

    def allowed(self, now: float) -> float:
        """Retries the window allows at `now`, spent or not."""
        fresh, _ = self._totals(now)
        return self._room(fresh)

    def _room(self, fresh: int) -> float:
        cfg = self.config
        return max(cfg.ratio * fresh, cfg.min_per_second * cfg.interval)

    def fresh(self, now: float) -> None:
        """An attempt that is not a retry is being sent: it makes room for `ratio` retries."""
        self._fresh[self._slot(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Spend room for one retry being sent now; False when there is none left."""
        fresh, retries = self._totals(now)
        if retries + 1 > self._room(fresh):
            return False
        self._retries[self._slot(now)] += 1
        return True

    def stretch(self, refusals: int, rng: random.Random) -> float:
        """Seconds a refused retry waits before asking again, after `refusals` refusals
        (>= 1): one slot at first, doubling up to the whole window, with jitter so that
        retries refused together do not all ask again together."""
        base = min(self.config.interval, self._width * 2 ** min(refusals - 1, 16))
        return rng.uniform(0.5 * base, base)


class Budgets:
    """The routes' budgets by route name; kept across a configuration reload (`apply`)."""

    def __init__(self, routes: Iterable[RouteConfig] = ()) -> None:
        self._by_route: dict[str, Budget] = {}
        self.apply(routes)

    def get(self, route: str) -> Budget | None:
        return self._by_route.get(route)

    def apply(self, routes: Iterable[RouteConfig]) -> None:
        """Budgets for these routes: a route whose budget settings are unchanged keeps its
        budget (and what its window counted); a changed one starts a fresh window."""
        old = self._by_route
        new: dict[str, Budget] = {}
        for route in routes:
            config = route.settings.retry.budget
            if not route.durable or config is None:
                continue
            kept = old.get(route.name)
            new[route.name] = kept if kept is not None and kept.config == config else Budget(config)
        self._by_route = new
