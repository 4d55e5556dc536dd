"""Retry budgets as traces: the window's arithmetic, the floor, the stretch's bounds."""

from __future__ import annotations

import random

import pytest

from gateway.config import RetryBudget, RetryPolicy, RouteConfig, RouteMatch, RouteSettings
from gateway.engine.budget import Budget, Budgets

# (now, action, expected): "fresh" adds an attempt that is not a retry; "retry" asks to
# send one (True: sent). Ratio 0.2, no floor, a 10 s window counted in 1 s slots.
TRACE = [
    *[(100.0, "fresh", None)] * 10,
    (100.2, "retry", True),  # 10 fresh attempts: room for 2 retries
    (100.4, "retry", True),
    (100.6, "retry", False),  # refused: it waits, and asks again later
    *[(105.0, "fresh", None)] * 5,
    (105.5, "retry", True),  # 15 fresh: 3 in all
    (105.5, "retry", False),
    (110.0, "retry", False),  # t=100's slot left the window: 5 fresh, 1 retry counted
    (115.9, "retry", False),  # t=105's left too: an empty window allows nothing
    (116.0, "fresh", None),
    *[(116.0, "fresh", None)] * 4,
    (116.0, "retry", True),
]


def test_the_window_holds_retries_to_the_ratio_of_other_attempts() -> None:
    budget = Budget(RetryBudget(ratio=0.2, min_per_second=0.0, interval=10.0))
    for now, action, expected in TRACE:
        if action == "fresh":
            budget.fresh(now)
        else:
            assert budget.try_retry(now) is expected, (now, action)


def test_the_floor_allows_retries_on_a_quiet_route() -> None:
    budget = Budget(RetryBudget(ratio=0.2, min_per_second=0.5, interval=10.0))
    assert budget.allowed(0.0) == 5.0
    assert [budget.try_retry(1.0) for _ in range(6)] == [True] * 5 + [False]
    for _ in range(50):
        budget.fresh(2.0)
    assert budget.allowed(2.0) == 10.0  # the ratio, once above the floor
    assert [budget.try_retry(2.0) for _ in range(6)] == [True] * 5 + [False]
    assert budget.try_retry(11.0)  # t=1's five retries left the window


def test_a_window_keeps_fixed_memory_whatever_the_rate() -> None:
    budget = Budget(RetryBudget(ratio=1.0, min_per_second=0.0, interval=1.0))
    for i in range(100_000):
        budget.fresh(i / 100_000)
    assert budget.allowed(0.99) == 100_000
    assert len(budget._fresh) == len(budget._retries) == 10


@pytest.mark.parametrize(
    ("refusals", "low", "high"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (4, 4.0, 8.0), (5, 5.0, 10.0), (1000, 5.0, 10.0)],
)
def test_a_refused_retry_waits_longer_each_time_up_to_the_window(
    refusals: int, low: float, high: float
) -> None:
    budget = Budget(RetryBudget(interval=10.0))
    rng = random.Random(7)
    delays = [budget.stretch(refusals, rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 2  # spread, not one value


def route(name: str, budget: RetryBudget | None, *, durable: bool = True) -> RouteConfig:
    settings = RouteSettings(retry=RetryPolicy(budget=budget))
    return RouteConfig(name, RouteMatch("/" + name), "http://h", durable, settings)


def test_budgets_are_kept_across_a_reload_unless_their_settings_change() -> None:
    budgets = Budgets([route("a", RetryBudget()), route("b", RetryBudget()), route("c", None)])
    a, b = budgets.get("a"), budgets.get("b")
    assert a is not None and b is not None and budgets.get("c") is None
    budgets.apply(
        [
            route("a", RetryBudget()),
            route("b", RetryBudget(ratio=0.5)),
            route("c", RetryBudget(), durable=False),
        ]
    )
    assert budgets.get("a") is a  # what its window counted is kept
    new_b = budgets.get("b")
    assert new_b is not None and new_b is not b and new_b.config.ratio == 0.5
    assert budgets.get("c") is None  # plain routes make no retries
    budgets.apply([])
    assert budgets.get("a") is None
