"""Limits: limit keys, token buckets as traces, bounded rate-limiter memory, FIFO concurrency,
and what a reload keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import ConcurrencyConfig, RateLimitConfig, RouteConfig, RouteMatch
from gateway.engine.limits import (
    ConcurrencyLimiter,
    Limits,
    RateLimiter,
    TokenBucket,
    limit_key,
)
from gateway.errors import Unavailable
from gateway.tasks import spawn

HEADERS = CIMultiDictProxy(CIMultiDict([("X-User-Id", "u1"), ("Accept", "*/*")]))


@pytest.mark.parametrize(
    ("spec", "headers", "query", "ip", "expected"),
    [
        (None, HEADERS, {"k": "v"}, "1.2.3.4", ""),
        ("header:x-user-id", HEADERS, {}, None, "u1"),
        ("header:X-USER-ID", HEADERS, {}, None, "u1"),
        ("header:x-user-id", {"X-User-Id": "u2"}, {}, None, "u2"),  # plain dict: still CI
        ("header:x-missing", HEADERS, {}, None, ""),
        ("query:tenant", HEADERS, {"tenant": "acme"}, None, "acme"),
        ("query:tenant", HEADERS, {}, None, ""),
        ("ip", HEADERS, {}, "1.2.3.4", "1.2.3.4"),
        ("ip", HEADERS, {}, None, ""),
    ],
)
def test_limit_key(
    spec: str | None,
    headers: CIMultiDictProxy[str] | dict[str, str],
    query: dict[str, str],
    ip: str | None,
    expected: str,
) -> None:
    assert limit_key(spec, headers, query, ip) == expected


@pytest.mark.parametrize("spec", ["cookie:x", "header:", "query:", "IP", ""])
def test_limit_key_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        limit_key(spec, HEADERS, {}, None)


# A trace of (now, expected wait) for a bucket of rate 2/s and burst 3.
BUCKET_TRACE = [
    (100.0, 0.0),  # full: 3 → 2
    (100.0, 0.0),  # 2 → 1
    (100.0, 0.0),  # 1 → 0
    (100.0, 0.5),  # empty: one token in 1/rate
    (100.25, 0.25),  # half a token back: a quarter second to go
    (100.5, 0.0),  # one token back, taken
    (100.5, 0.5),
    (110.0, 0.0),  # long idle: refilled to burst (3), not more
    (110.0, 0.0),
    (110.0, 0.0),
    (110.0, 0.5),
    (109.0, 0.5),  # the clock steps back: no refill, no crash
]


def test_token_bucket_trace() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    waits = [bucket.take(now) for now, _ in BUCKET_TRACE]
    assert waits == pytest.approx([wait for _, wait in BUCKET_TRACE])


def test_token_bucket_is_full() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.is_full(0.0)
    bucket.take(0.0)
    assert not bucket.is_full(0.5)
    assert bucket.is_full(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_token_bucket_rejects_bad_shapes(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_rate_limiter_keeps_keys_apart() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=1.0, burst=1))
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == pytest.approx(1.0)
    assert limiter.check("b", 0.0) == 0.0
    assert limiter.check("a", 1.0) == 0.0


def test_rate_limiter_forgets_full_buckets() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=10.0, burst=5))
    for i in range(100):
        limiter.check(f"k{i}", 0.0)
    assert len(limiter) == 100
    # every bucket refills in 0.1s; the next check sweeps them out
    limiter.check("fresh", 1.0)
    assert len(limiter) == 1


def test_rate_limiter_memory_is_bounded_under_key_flood() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=0.001, burst=2), max_keys=50)
    for i in range(1000):
        assert limiter.check(f"k{i}", float(i) / 1000) == 0.0
        assert len(limiter) <= 50
    assert len(limiter) == 50


def test_rate_limiter_evicts_the_longest_idle_first() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=0.001, burst=1), max_keys=2)
    limiter.check("old", 0.0)
    limiter.check("busy", 0.0)
    limiter.check("old", 0.1)  # now "busy" is the longest idle
    limiter.check("new", 0.2)  # over the bound: "busy" goes
    assert limiter.check("old", 0.3) > 0.0  # still remembered: drained
    assert limiter.check("busy", 0.3) == 0.0  # forgotten: a fresh bucket


def test_rate_limiter_validates_config_up_front() -> None:
    with pytest.raises(ValueError):
        RateLimiter(RateLimitConfig(rate=0.0, burst=1))


# --- concurrency: real asyncio tasks ------------------------------------------------


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until `predicate` holds (no timed sleeps)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def until_equal(get: Callable[[], object], want: object) -> None:
    """`until`, for a value computed now (so a loop variable is bound at the call)."""
    await until(lambda: get() == want)


def cfg(limit: int, queue_timeout: float = 30.0) -> ConcurrencyConfig:
    return ConcurrencyConfig(limit=limit, queue_timeout=queue_timeout)


async def test_concurrency_admits_up_to_limit_at_once() -> None:
    limiter = ConcurrencyLimiter(cfg(2))
    await limiter.acquire("k")
    await limiter.acquire("k")
    assert limiter.in_use("k") == 2
    await limiter.acquire("other")  # keys are independent
    assert limiter.in_use("other") == 1


async def test_concurrency_queue_is_fifo_and_no_one_overtakes() -> None:
    limiter = ConcurrencyLimiter(cfg(1))
    order: list[str] = []
    await limiter.acquire("k")

    async def worker(name: str) -> None:
        await limiter.acquire("k")
        order.append(name)

    async with asyncio.TaskGroup() as tg:
        for name in ("a", "b", "c"):
            tg.create_task(worker(name))
            await until_equal(lambda: limiter.queued("k"), "abc".index(name) + 1)
        assert order == []
        for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
            limiter.release("k")
            await until_equal(lambda: order, expected)
            assert limiter.in_use("k") == 1  # the slot moved; it never freed up
    limiter.release("k")
    assert len(limiter) == 0


async def test_concurrency_newcomer_waits_behind_queue() -> None:
    limiter = ConcurrencyLimiter(cfg(1))
    await limiter.acquire("k")
    got: list[str] = []

    async def take(name: str) -> None:
        await limiter.acquire("k")
        got.append(name)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take("queued"))
        await until(lambda: limiter.queued("k") == 1)
        limiter.release("k")  # handed to "queued" before it even runs
        tg.create_task(take("newcomer"))
        await until(lambda: got == ["queued"] and limiter.queued("k") == 1)
        limiter.release("k")
    assert got == ["queued", "newcomer"]


async def test_concurrency_queue_timeout_raises_unavailable_and_cleans_up() -> None:
    limiter = ConcurrencyLimiter(cfg(1, queue_timeout=0.01))
    await limiter.acquire("k")
    with pytest.raises(Unavailable) as caught:
        await limiter.acquire("k")
    assert caught.value.status == 503
    assert "concurrency queue timeout" in caught.value.detail
    assert limiter.queued("k") == 0 and limiter.in_use("k") == 1
    limiter.release("k")
    assert len(limiter) == 0


async def test_concurrency_zero_queue_timeout_refuses_at_once_when_full() -> None:
    limiter = ConcurrencyLimiter(cfg(1, queue_timeout=0.0))
    await limiter.acquire("k")  # a free slot needs no waiting
    with pytest.raises(Unavailable):
        await limiter.acquire("k")


async def test_concurrency_cancelled_waiter_leaves_the_queue() -> None:
    limiter = ConcurrencyLimiter(cfg(1))
    await limiter.acquire("k")
    async with asyncio.TaskGroup() as tg:
        waiter = tg.create_task(limiter.acquire("k"))
        await until(lambda: limiter.queued("k") == 1)
        waiter.cancel()
        await until(waiter.done)
    assert waiter.cancelled()
    assert limiter.queued("k") == 0
    limiter.release("k")
    assert len(limiter) == 0


async def test_concurrency_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    limiter = ConcurrencyLimiter(cfg(1))
    await limiter.acquire("k")
    admitted: list[str] = []

    async def second() -> None:
        await limiter.acquire("k")
        admitted.append("second")

    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(limiter.acquire("k"))
        await until(lambda: limiter.queued("k") == 1)
        tg.create_task(second())
        await until(lambda: limiter.queued("k") == 2)
        # hand the slot to `first` and cancel it before it runs: it must pass the slot on
        limiter.release("k")
        first.cancel()
        await until(lambda: admitted == ["second"])
    assert first.cancelled()
    assert limiter.in_use("k") == 1
    limiter.release("k")
    assert len(limiter) == 0


async def test_concurrency_retry_waits_past_queue_timeout_and_keeps_its_place() -> None:
    """A started run's retry (`wait_forever`) is never timed out or sent to the back of
    the line: it gets the first slot released, ahead of a newcomer queued after it."""
    limiter = ConcurrencyLimiter(cfg(1, queue_timeout=0.05))
    await limiter.acquire("k")
    order: list[str] = []

    async def take(name: str, wait_forever: bool) -> None:
        await limiter.acquire("k", wait_forever=wait_forever)
        order.append(name)

    retry = spawn(take("retry", True), name="retry")
    await until(lambda: limiter.queued("k") == 1)
    await asyncio.sleep(0.1)  # twice the queue timeout: a timed wait would have failed
    assert not retry.done() and limiter.queued("k") == 1
    newcomer = spawn(take("newcomer", True), name="newcomer")
    await until(lambda: limiter.queued("k") == 2)
    limiter.release("k")
    await until(lambda: order == ["retry"])
    limiter.release("k")
    await until(lambda: order == ["retry", "newcomer"])
    await asyncio.gather(retry, newcomer)
    limiter.release("k")
    assert len(limiter) == 0


async def test_concurrency_release_without_acquire_is_a_bug() -> None:
    limiter = ConcurrencyLimiter(cfg(1))
    with pytest.raises(RuntimeError):
        limiter.release("k")


async def test_concurrency_memory_is_bounded_by_live_keys() -> None:
    limiter = ConcurrencyLimiter(cfg(1))
    for i in range(1000):
        await limiter.acquire(f"user-{i}")
        limiter.release(f"user-{i}")
    assert len(limiter) == 0


def test_concurrency_rejects_zero_limit() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimiter(cfg(0))


# ── Limits across a reload ──────────────────────────────────────────────────────


def route(
    name: str,
    rate_limit: RateLimitConfig | None = None,
    concurrency: ConcurrencyConfig | None = None,
) -> RouteConfig:
    return RouteConfig(
        name, RouteMatch("/*"), "http://h", rate_limit=rate_limit, concurrency=concurrency
    )


async def test_a_reload_keeps_unchanged_limiters_and_replaces_changed_ones() -> None:
    rate = RateLimitConfig(rate=1.0, burst=1)
    before = Limits(
        [route("same", rate_limit=rate, concurrency=cfg(1)), route("moved", concurrency=cfg(1))]
    )
    await before.concurrency["same"].acquire("")  # held across the reload
    await before.concurrency["moved"].acquire("")
    assert before.rate["same"].check("", 0.0) == 0.0  # its one token is spent
    after = Limits(
        [
            route("same", rate_limit=rate, concurrency=cfg(1)),
            route("moved", concurrency=cfg(2)),
            route("new", rate_limit=rate),
        ],
        previous=before,
    )
    assert after.rate["same"] is before.rate["same"]
    assert after.rate["same"].check("", 0.0) > 0  # the bucket was kept, still empty
    assert after.concurrency["same"].in_use("") == 1
    assert after.concurrency["moved"] is not before.concurrency["moved"]
    assert after.concurrency["moved"].in_use("") == 0  # the holder releases the old one
    assert set(after.rate) == {"same", "new"} and set(after.concurrency) == {"same", "moved"}
    assert Limits([route("same")], previous=before).concurrency == {}
