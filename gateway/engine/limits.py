"""Route limits: per-key token-bucket rate limits (pure) and per-key concurrency queues.

Memory stays bounded whatever keys clients send; never sleeps on the caller's behalf
except in `ConcurrencyLimiter.acquire`, whose queue is the point.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Final, final

from gateway.config import ConcurrencyConfig, RateLimitConfig, RouteConfig
from gateway.errors import Unavailable

MAX_RATE_KEYS: Final = 10_000
"""Buckets a RateLimiter keeps before it forgets the longest-idle ones."""


def limit_key(
    spec: str | None,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    client_ip: str | None,
) -> str:
    """The key a request is limited under: `""` (one for the route) when absent.

    `spec` is `header:NAME`, `query:NAME` or `ip` (validated by the config loader).
    """
    if spec is None:
        return ""
    kind, _, name = spec.partition(":")
    if kind == "header" and name:
        value = headers.get(name)
        if value is None:
            # A plain dict is case-sensitive; header names are not.
            lower = name.lower()
            value = next((v for k, v in headers.items() if k.lower() == lower), "")
        return value
    if kind == "query" and name:
        return query.get(name, "")
    if spec == "ip":
        return client_ip or ""
    raise ValueError(f"unknown limit key {spec!r}: use header:NAME, query:NAME or ip")


@final
class TokenBucket:
    """Up to `burst` requests at once, refilled at `rate` per second."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        # A clock that steps back refills nothing rather than draining the bucket.
        if self._last is None or now > self._last:
            self._last = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else seconds until one will be available."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def is_full(self, now: float) -> bool:
        """True when the bucket would hold `burst` tokens at `now`: it remembers nothing."""
        if self._last is None:
            return True
        elapsed = max(0.0, now - self._last)
        return self._tokens + elapsed * self.rate >= self.burst


@final
class RateLimiter:
    """One token bucket per key, in bounded memory.

    A full bucket carries no information (a new one starts full), so forgetting it is
    exact. Buckets are kept in least-recently-used order; full ones are dropped from the
    old end as we go, and past `max_keys` the longest-idle bucket is dropped even if not
    yet full. That can only forgive a key part of one burst, and only while more than
    `max_keys` keys are active, which is no help to a client rotating keys: every new
    key starts with a full bucket anyway.
    """

    __slots__ = ("_cfg", "_buckets", "_max_keys")

    def __init__(self, cfg: RateLimitConfig, *, max_keys: int = MAX_RATE_KEYS) -> None:
        TokenBucket(cfg.rate, cfg.burst)  # validate now, not on the first request
        self._cfg = cfg
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def config(self) -> RateLimitConfig:
        return self._cfg

    def check(self, key: str, now: float) -> float:
        """0.0 when the request may pass; else seconds until it could (for `Retry-After`)."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._cfg.rate, self._cfg.burst)
        wait = bucket.take(now)
        self._evict(now)
        self._buckets[key] = bucket
        return wait

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if not oldest.is_full(now) and len(buckets) < self._max_keys:
                break
            buckets.popitem(last=False)


class _Slots:
    """One key's concurrency state: slots in use and the FIFO of waiters."""

    __slots__ = ("active", "waiters")

    def __init__(self) -> None:
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


@final
class ConcurrencyLimiter:
    """At most `limit` holders per key; the rest queue FIFO up to `queue_timeout`.

    A released slot is handed straight to the oldest waiter, so a newcomer can never
    overtake the queue. A key's state exists only while it has holders or waiters.
    """

    __slots__ = ("_cfg", "_keys")

    def __init__(self, cfg: ConcurrencyConfig) -> None:
        if cfg.limit < 1:
            raise ValueError(f"concurrency limit must be >= 1, got {cfg.limit}")
        self._cfg = cfg
        self._keys: dict[str, _Slots] = {}

    def __len__(self) -> int:
        """Keys with holders or waiters (the limiter's memory)."""
        return len(self._keys)

    @property
    def config(self) -> ConcurrencyConfig:
        return self._cfg

    def in_use(self, key: str) -> int:
        slots = self._keys.get(key)
        return slots.active if slots else 0

    def queued(self, key: str) -> int:
        slots = self._keys.get(key)
        return sum(1 for w in slots.waiters if not w.done()) if slots else 0

    async def acquire(self, key: str, *, wait_forever: bool = False) -> None:
        """Wait for a slot under `key`; raises Unavailable after `queue_timeout`, unless
        `wait_forever` (a run's retry, which has started and keeps its place in line).

        A slot handed over just as the timer fires is kept, not lost; one handed over
        to a waiter that is being cancelled is passed on.
        """
        slots = self._keys.get(key)
        if slots is None:
            slots = self._keys[key] = _Slots()
        if slots.active < self._cfg.limit and not slots.waiters:
            slots.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            async with asyncio.timeout(None if wait_forever else self._cfg.queue_timeout):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return
            self._forget(key, slots, waiter)
            raise Unavailable(
                f"concurrency queue timeout: no slot within {self._cfg.queue_timeout:g}s"
                f" (limit {self._cfg.limit})"
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(key)
            else:
                self._forget(key, slots, waiter)
            raise

    def release(self, key: str) -> None:
        """Give a slot back: to the oldest live waiter, else to the pool."""
        slots = self._keys.get(key)
        if slots is None or slots.active == 0:
            raise RuntimeError(f"release of {key!r} without a matching acquire")
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves; `active` is unchanged
                return
        slots.active -= 1
        if slots.active == 0:
            del self._keys[key]

    def _forget(self, key: str, slots: _Slots, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        try:
            slots.waiters.remove(waiter)
        except ValueError:
            pass  # release() already popped it
        if slots.active == 0 and not slots.waiters and self._keys.get(key) is slots:
            del self._keys[key]


class Limits:
    """Per-route rate limiters and concurrency queues, built from the config.

    Built again on a reload with the ones in force as `previous`: a route whose limit
    is unchanged keeps its limiter (buckets, holders, queue). A new or changed limit
    starts afresh; attempts holding or queued for a slot of the old one finish there,
    so for a moment a route may have both limits' worth of attempts in flight.
    """

    def __init__(self, routes: Sequence[RouteConfig], previous: Limits | None = None) -> None:
        self.rate: dict[str, RateLimiter] = {}
        self.concurrency: dict[str, ConcurrencyLimiter] = {}
        for r in routes:
            if r.rate_limit is not None:
                rate = previous.rate.get(r.name) if previous else None
                if rate is None or rate.config != r.rate_limit:
                    rate = RateLimiter(r.rate_limit)
                self.rate[r.name] = rate
            if r.concurrency is not None:
                slots = previous.concurrency.get(r.name) if previous else None
                if slots is None or slots.config != r.concurrency:
                    slots = ConcurrencyLimiter(r.concurrency)
                self.concurrency[r.name] = slots
