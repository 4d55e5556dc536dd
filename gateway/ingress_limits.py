"""Rate limiters and concurrency queues of the routes, built once from the config.

Held by the services; the ingress consults them before admitting a request.
"""

from __future__ import annotations

from gateway.config import RouteConfig
from gateway.limits import ConcurrencyLimiter, RateLimiter


class Limits:
    """Per-route rate limiters and concurrency queues, built once from the config."""

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.rate = {r.name: RateLimiter(r.rate_limit) for r in routes if r.rate_limit}
        self.concurrency = {
            r.name: ConcurrencyLimiter(r.concurrency) for r in routes if r.concurrency
        }
