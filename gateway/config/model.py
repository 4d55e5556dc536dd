"""The configuration's shape: frozen dataclasses, one documented attribute per field.

Only shapes and defaults live here; parsing, `${ENV}` expansion and error reporting
with key paths and lines are in `config_loader.py`. Durations are float seconds,
sizes are int bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

ErrorKind = Literal["connect_error", "timeout"]
Durability = Literal["async", "sync"]
Idempotency = Literal["off", "optional", "required"]
OnExhausted = Literal["fail", "pause"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    ingress: tuple[str, int] = ("0.0.0.0", 8080)
    """Public listener, `host:port`."""
    sidecar: tuple[str, int] = ("127.0.0.1", 8081)
    """Listener for backends' step calls; loopback by default."""
    admin: tuple[str, int] = ("127.0.0.1", 8082)
    """Metrics, runs API, events and health; loopback by default."""
    public_url: str | None = None
    """Base URL for `Location` headers; default: built from the request's Host."""
    sidecar_url: str | None = None
    """Base URL backends are told to call; default: `http://` + the sidecar address."""
    shutdown_grace: float = 10.0
    """How long SIGTERM waits for in-flight attempts before closing."""
    header_timeout: float = 10.0
    """Longest a request's headers may take: from the connection's start, or on a
    kept-alive connection from the first byte of the next request."""
    body_timeout: float = 30.0
    """Longest silence while the gateway waits for more of a request body."""
    keepalive_timeout: float = 75.0
    """An idle kept-alive connection is closed after this (longer than the idle timeout
    of a load balancer in front, so it never reuses a connection being closed)."""
    max_connections: int = 1000
    """Open connections per listener; past it a new connection is closed at once."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = "sqlite:///./durable.db"
    """`sqlite:///relative.db`, `sqlite:////absolute.db` (one node), or
    `postgresql://user:pw@host:5432/db` (any number of nodes share it)."""
    durability: Durability = "async"
    """`async`: write-behind group commit; `sync`: step writes answer after commit."""
    retention: float = 7 * 86400.0
    """Finished runs and idempotency keys are purged after this."""
    pool: int = 10
    """Connections per node to PostgreSQL (SQLite uses two, whatever this says)."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str | None = None
    """This node's name in logs, metrics and the runs API; default host name + pid."""
    lease: float = 10.0
    """A node silent this long (hung, partitioned) loses its runs to the others."""


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    secret: str | None = None
    """Signs run and result tokens; generated and kept in the store when absent."""
    admin_token: str | None = None
    """Bearer token the admin API requires; none means open (bind it to loopback)."""
    previous_secrets: tuple[str, ...] = ()
    """Earlier secrets still accepted while rotating `secret`: the tokens and result URLs
    they signed stay valid and the credentials they sealed still open. Needs `secret`."""
    sensitive_headers: frozenset[str] = frozenset()
    """Request headers (lower-case names) stored encrypted and shown redacted, besides
    Authorization, Cookie and Proxy-Authorization, which always are."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry traces of runs, attempts and steps; off unless `otlp_endpoint` is set."""

    otlp_endpoint: str | None = None
    """OTLP/HTTP (protobuf) URL of a collector: a base such as `http://localhost:4318`
    (spans go to its `/v1/traces`), or the full traces URL."""
    service_name: str = "durable-gateway"
    sample_ratio: float = 1.0
    """Share of new traces recorded; a client's `traceparent` decides for its own."""
    resource_attributes: tuple[tuple[str, str], ...] = ()
    """Extra attributes of the exporting process (`deployment.environment`, ...)."""
    headers: tuple[tuple[str, str], ...] = ()
    """Sent with each export (a hosted collector's API key)."""
    ui_url: str | None = None
    """A trace viewer's link template with `{trace_id}`, for the dashboard."""

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None

    @property
    def traces_url(self) -> str | None:
        """Where spans are posted: the endpoint's `/v1/traces` unless it names a path."""
        url = self.otlp_endpoint
        if url is None or urlsplit(url).path.strip("/"):
            return url
        return url.rstrip("/") + "/v1/traces"


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many retries a route may send, so that retries cannot multiply an outage.

    Over the last `interval`, retries sent may be at most
    max(ratio × the route's other attempts, min_per_second × interval); a retry past
    that waits (its backoff stretched) until there is room. Envoy's and GEP-3388's
    defaults, which normal traffic never reaches.
    """

    ratio: float = 0.2
    """Retries per other attempt (first attempts, and those after a sleep or wait) in
    the window; 0 < ratio <= 1."""
    min_per_second: float = 10.0
    """Retries a second always allowed, however quiet the route (>= 0)."""
    interval: float = 10.0
    """The sliding window both are counted over."""


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Per upstream origin: after `failures` failed attempts in a row, hold its attempts
    and let one probe through per `interval`; the probe's success closes it again."""

    failures: int = 5
    """Consecutive failures (a status in `retry.on`, a connect error, a timeout) that open it."""
    interval: float = 5.0
    """Time between probes while it is open."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    """Attempts in all, the first included (>= 1)."""
    initial_backoff: float = 0.2
    """Delay before the second attempt."""
    max_backoff: float = 30.0
    """Ceiling on the computed delay (an upstream `Retry-After` may exceed it)."""
    multiplier: float = 2.0
    """Growth of the delay per attempt (>= 1)."""
    jitter: float = 0.2
    """Each delay is spread uniformly by ± this fraction (0..1)."""
    on_status: frozenset[int] = frozenset({500, 502, 503, 504})
    """Upstream statuses that are retried (from `on:`)."""
    on_errors: frozenset[ErrorKind] = frozenset({"connect_error", "timeout"})
    """Failure kinds without a response that are retried (from `on:`)."""
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    """The route's retry budget; None (`budget: off`) lets every retry go at its backoff."""


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    limit: int
    """Attempts in flight at once per key; more wait in a queue."""
    key: str | None = None
    """`header:NAME`, `query:NAME` or `ip`; none means one queue for the route."""
    queue_timeout: float = 30.0
    """How long a request may wait in the queue before a 503."""


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    rate: float
    """Tokens per second (from `10/s`, `600/m`, `3600/h`)."""
    burst: int
    """Bucket size."""
    key: str | None = None
    """As for concurrency."""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: str
    """Exact path, or a prefix when it ends in `/*`."""
    methods: frozenset[str] | None = None
    """Upper-case methods; none matches any."""

    @property
    def is_prefix(self) -> bool:
        return self.path.endswith("/*")


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What `defaults:` sets and each route may override."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    attempt_timeout: float = 30.0
    """Time allowed until the upstream's response headers arrive."""
    hold: float = 10.0
    """How long the client connection may wait for retries before a 303."""
    max_body: int = 10 * 1024 * 1024
    """Largest request body stored with a run; past it, 413."""
    max_response: int = 64 * 1024 * 1024
    """Largest response body kept as a run's result; past it the body still streams to
    the client, and the result URL answers 410."""
    max_step_output: int = 4 * 1024 * 1024
    """Largest JSON output of one step."""
    max_run_state: int = 32 * 1024 * 1024
    """All step outputs of one run together."""
    max_steps: int = 1000
    """Steps per run."""
    idempotency: Idempotency = "optional"
    """`off`, `optional` or `required` use of `Idempotency-Key`."""
    idempotency_scope: tuple[str, ...] = ("header:authorization",)
    """What identifies a caller, whose keys are its own: `header:NAME`, `query:NAME`,
    `ip`. Callers that send none of them share one anonymous scope; `[]`, one scope for
    everyone (keys of all callers collide)."""
    on_exhausted: OnExhausted = "fail"
    """`fail`: the last response is final; `pause`: wait for an operator's retry."""
    circuit_breaker: CircuitBreakerConfig | None = None
    """The upstream's circuit breaker; off by default (None)."""


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    """Unique name, used in metrics and the runs API."""
    match: RouteMatch
    upstream: str
    """Base URL of the backend; the request's path and query are appended."""
    durable: bool = True
    """False makes the route a plain reverse proxy."""
    settings: RouteSettings = field(default_factory=RouteSettings)
    concurrency: ConcurrencyConfig | None = None
    rate_limit: RateLimitConfig | None = None

    @property
    def origin(self) -> str:
        """The upstream's origin (`scheme://host:port`): what a circuit breaker guards."""
        return upstream_origin(self.upstream)


def upstream_origin(url: str) -> str:
    """`scheme://host:port` of an http(s) URL, lower-cased, with the default port spelt out."""
    host, port = host_port(url)
    if ":" in host:
        host = f"[{host}]"
    return f"{urlsplit(url).scheme.lower()}://{host}:{port}"


def host_port(url: str) -> tuple[str, int]:
    """The host (lower-cased, IPv6 without brackets) and port of an http(s) URL, the
    default port spelt out."""
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (
        443 if parts.scheme.lower() == "https" else 80
    )


def local_url(address: tuple[str, int]) -> str:
    """The base URL a process on this host reaches a listener at: a wildcard address
    (all interfaces) is reached on loopback."""
    host, port = address
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    defaults: RouteSettings = field(default_factory=RouteSettings)
    routes: tuple[RouteConfig, ...] = ()
    source: str = "<memory>"
    """The file the config came from, for messages."""
