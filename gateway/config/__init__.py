"""Configuration: the frozen shapes (`model`) and the YAML loader that builds them (`loader`).

Imported by every layer; imports nothing of the gateway but `errors`.
"""

from gateway.config.model import (
    CircuitBreakerConfig,
    ClusterConfig,
    ConcurrencyConfig,
    GatewayConfig,
    RateLimitConfig,
    RetryBudget,
    RetryPolicy,
    RouteConfig,
    RouteMatch,
    RouteSettings,
    SecurityConfig,
    ServerConfig,
    StorageConfig,
    TracingConfig,
    local_url,
)

__all__ = [
    "CircuitBreakerConfig",
    "ClusterConfig",
    "ConcurrencyConfig",
    "GatewayConfig",
    "RateLimitConfig",
    "RetryBudget",
    "RetryPolicy",
    "RouteConfig",
    "RouteMatch",
    "RouteSettings",
    "SecurityConfig",
    "ServerConfig",
    "StorageConfig",
    "TracingConfig",
    "local_url",
]
