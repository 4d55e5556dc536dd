"""Configuration: the frozen shapes (`model`) and the YAML loader that builds them (`loader`).

Imported by every layer; imports nothing of the gateway but `errors`.
"""

from gateway.config.model import (
    ClusterConfig,
    ConcurrencyConfig,
    GatewayConfig,
    RateLimitConfig,
    RetryPolicy,
    RouteConfig,
    RouteMatch,
    RouteSettings,
    SecurityConfig,
    ServerConfig,
    StorageConfig,
)

__all__ = [
    "ClusterConfig",
    "ConcurrencyConfig",
    "GatewayConfig",
    "RateLimitConfig",
    "RetryPolicy",
    "RouteConfig",
    "RouteMatch",
    "RouteSettings",
    "SecurityConfig",
    "ServerConfig",
    "StorageConfig",
]
