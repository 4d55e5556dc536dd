"""config_loader: value parsers, ${ENV} expansion, defaults merging, and error locations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import (
    CircuitBreakerConfig,
    ConcurrencyConfig,
    GatewayConfig,
    RateLimitConfig,
    RetryBudget,
    RetryPolicy,
    RouteMatch,
    RouteSettings,
    SecurityConfig,
    ServerConfig,
    StorageConfig,
    TracingConfig,
)
from gateway.config.loader import (
    load_config,
    load_config_text,
    parse_address,
    parse_duration,
    parse_rate,
    parse_size,
)
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ROUTE = "routes:\n  - {name: r, match: {path: /x}, upstream: http://127.0.0.1:3000}\n"


def load(text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    return load_config_text(text, source="cfg.yaml", env=env or {})


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


# ── value parsers ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        ("1h30m", 5400.0),
        ("250 ms", 0.25),
        ("30", 30.0),
        ("0.5", 0.5),
        ("0s", 0.0),
        (30, 30.0),
        (0.25, 0.25),
        ("3650d", 315_360_000.0),  # the ceiling, wire.MAX_DURATION
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["3651d", "99999999999d", 1e20, "1" * 60])
def test_parse_duration_rejects_past_ten_years(text: str | float) -> None:
    with pytest.raises(ValueError, match=r"is too long: at most 10 years \(315360000 s\)$"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "5x", "٣s", "-5s", "5mm", "1.2.3s", "inf", "nan", "5 s m", -1, True]
)
def test_parse_duration_rejects(text: str | float) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("512KiB", 512 * 1024),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("100KB", 100_000),
        ("10MB", 10_000_000),
        ("10 mib", 10 * 1024**2),
        ("0.5KiB", 512),
        ("1024", 1024),
        (2048, 2048),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "KiB", "10XB", "1.5", "1.5B", "-1", "10 MiB extra", -1, True])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("localhost:9000", ("localhost", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        (":8080", ("0.0.0.0", 8080)),
        ("8080", ("0.0.0.0", 8080)),
        (8080, ("0.0.0.0", 8080)),
    ],
)
def test_parse_address(text: str | int, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "port 1..65535"),
        ("host:", "port 1..65535"),
        ("host:http", "port 1..65535"),
        ("host:0", "port 1..65535"),
        ("host:70000", "port 1..65535"),
        ("host:８０", "port 1..65535"),
        ("::1:8080", "brackets"),
        ("[nothost]:8080", "bad IPv6"),
        ("bad_host!:8080", "bad host name"),
    ],
)
def test_parse_address_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_address(text)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("600/m", 10.0), ("3600/h", 1.0), ("100/10s", 10.0), ("2.5", 2.5), (4, 4.0)],
)
def test_parse_rate(text: str | float, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "0/s", "10/", "10/x", "x/s", "-1/s", "10/0s"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


# ── whole configs ───────────────────────────────────────────────────────────────


def test_minimal_config_takes_every_default() -> None:
    cfg = load(ROUTE)
    assert (cfg.server, cfg.storage, cfg.security) == (
        ServerConfig(),
        StorageConfig(),
        SecurityConfig(),
    )
    assert cfg.defaults == RouteSettings()
    (route,) = cfg.routes
    assert (route.name, route.match, route.upstream) == (
        "r",
        RouteMatch("/x"),
        "http://127.0.0.1:3000",
    )
    assert route.durable and route.settings == RouteSettings()
    assert route.concurrency is None and route.rate_limit is None
    assert cfg.source == "cfg.yaml"


def test_design_example_shape_loads(tmp_path: Path) -> None:
    cfg = load(
        """
server:
  ingress: 0.0.0.0:8080
  sidecar: 127.0.0.1:8081
  admin: 127.0.0.1:8082
  public_url: http://localhost:8080/
  sidecar_url: http://127.0.0.1:8081
  shutdown_grace: 5s
storage: {url: "sqlite:///${DATA}/durable.db", durability: sync, retention: 1d}
security: {secret: "${DURABLE_SECRET}", admin_token: "${DURABLE_ADMIN_TOKEN}"}
routes:
  - name: chat
    match: {path: /api/chat, methods: [post, GET]}
    upstream: http://127.0.0.1:3000/
    idempotency: required
    concurrency: {limit: 20, key: header:X-User-Id}
    rate_limit: {rate: 10/s, burst: 20, key: header:x-user-id}
  - name: assets
    match: {path: /static/*}
    upstream: https://assets.internal:3001/base
    durable: false
""",
        env={"DATA": str(tmp_path / "data"), "DURABLE_ADMIN_TOKEN": "adm"},
    )
    assert cfg.server.public_url == "http://localhost:8080"
    assert cfg.server.shutdown_grace == 5.0
    assert cfg.storage == StorageConfig(f"sqlite:///{tmp_path}/data/durable.db", "sync", 86400.0)
    assert cfg.security == SecurityConfig(secret=None, admin_token="adm")
    chat, assets = cfg.routes
    assert chat.match == RouteMatch("/api/chat", frozenset({"POST", "GET"}))
    assert chat.upstream == "http://127.0.0.1:3000"
    assert chat.settings.idempotency == "required"
    assert chat.concurrency == ConcurrencyConfig(limit=20, key="header:x-user-id")
    assert chat.rate_limit == RateLimitConfig(rate=10.0, burst=20, key="header:x-user-id")
    assert assets.match.is_prefix and not assets.durable
    assert assets.upstream == "https://assets.internal:3001/base"


def test_route_settings_inherit_defaults_per_field() -> None:
    cfg = load(
        """
defaults:
  retry: {max_attempts: 7, initial_backoff: 1s, on: [503, 5xx, timeout]}
  hold: 2s
  max_body: 1MiB
routes:
  - {name: a, match: /a, upstream: http://h, retry: {max_attempts: 2}, hold: 0s}
  - {name: b, match: /b, upstream: http://h, retry: {on: [429]}, max_steps: 5}
  - {name: c, match: /c, upstream: http://h}
"""
    )
    base = RetryPolicy(
        max_attempts=7,
        initial_backoff=1.0,
        on_status=frozenset(range(500, 600)),
        on_errors=frozenset({"timeout"}),
    )
    assert cfg.defaults == RouteSettings(retry=base, hold=2.0, max_body=1024**2)
    a, b, c = (route.settings for route in cfg.routes)
    assert a == dataclasses.replace(
        cfg.defaults, retry=dataclasses.replace(base, max_attempts=2), hold=0.0
    )
    # `on` is one list: a route's list replaces both halves of the default's
    b_retry = dataclasses.replace(base, on_status=frozenset({429}), on_errors=frozenset())
    assert b == dataclasses.replace(cfg.defaults, retry=b_retry, max_steps=5)
    assert c == cfg.defaults


def test_every_route_setting_is_read() -> None:
    """A field added to RouteSettings without loader support fails here."""
    cfg = load(
        """
defaults:
  retry: {max_attempts: 2, initial_backoff: 1s, max_backoff: 2s, multiplier: 3, jitter: 0,
          on: [connect_error], budget: "off"}
  attempt_timeout: 1s
  hold: 1s
  max_body: 1KiB
  max_response: 2KiB
  max_step_output: 1KiB
  max_run_state: 2KiB
  max_steps: 3
  idempotency: "off"
  idempotency_scope: [header:X-Tenant, ip]
  on_exhausted: pause
  circuit_breaker: {}
"""
        + ROUTE
    )
    assert cfg.defaults.idempotency_scope == ("header:x-tenant", "ip")
    for name in [f.name for f in dataclasses.fields(RouteSettings)]:
        assert getattr(cfg.defaults, name) != getattr(RouteSettings(), name), name
    for name in [f.name for f in dataclasses.fields(RetryPolicy)]:
        assert getattr(cfg.defaults.retry, name) != getattr(RetryPolicy(), name), name
    assert cfg.routes[0].settings == cfg.defaults


def test_connection_settings_are_read() -> None:
    cfg = load(
        "server:\n  header_timeout: 2s\n  body_timeout: 3s\n  keepalive_timeout: 4s\n"
        "  max_connections: 20\n" + ROUTE
    )
    server = cfg.server
    assert (server.header_timeout, server.body_timeout, server.keepalive_timeout) == (2, 3, 4)
    assert server.max_connections == 20


def test_idempotency_scope_may_be_empty_and_is_per_route() -> None:
    cfg = load(
        "defaults: {idempotency_scope: []}\nroutes:\n"
        "  - {name: a, match: /a, upstream: http://h}\n"
        "  - {name: b, match: /b, upstream: http://h, idempotency_scope: [query:user]}\n"
    )
    assert [r.settings.idempotency_scope for r in cfg.routes] == [(), ("query:user",)]


def test_rate_limit_burst_defaults_to_rate_rounded_up() -> None:
    cfg = load(
        "routes:\n  - name: r\n    match: /x\n    upstream: http://h\n"
        "    rate_limit: {rate: 90/m, key: ip}\n"
        "    concurrency: {limit: 1, queue_timeout: 0s}\n"
    )
    assert cfg.routes[0].rate_limit == RateLimitConfig(rate=1.5, burst=2, key="ip")
    assert cfg.routes[0].concurrency == ConcurrencyConfig(limit=1, queue_timeout=0.0)


# ── ${ENV} expansion ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${DB:-sqlite:///d.db}", {}, "sqlite:///d.db"),
        ("${DB:-sqlite:///d.db}", {"DB": "sqlite:///e.db"}, "sqlite:///e.db"),
        ("${DB:-sqlite:///d.db}", {"DB": ""}, "sqlite:///d.db"),
        ("sqlite:///${DIR:-data}/${NAME}.db", {"NAME": "g"}, "sqlite:///data/g.db"),
        ("sqlite:///${DIR}/${NAME}.db", {"DIR": "/var", "NAME": "g"}, "sqlite:////var/g.db"),
        ("sqlite:///$${literal}.db", {}, "sqlite:///${literal}.db"),
    ],
)
def test_env_expansion_per_scalar(value: str, env: dict[str, str], expected: str) -> None:
    cfg = load(f'storage: {{url: "{value}"}}\n' + ROUTE, env)
    assert cfg.storage.url == expected


def test_expanded_scalars_are_typed_from_their_text() -> None:
    cfg = load(
        "defaults:\n"
        "  retry: {max_attempts: '${N:-3}', jitter: '${J}', on: ['${S:-502}', timeout]}\n"
        "  hold: ${HOLD:-250ms}\n" + ROUTE.replace("/x}", "/x}, durable: '${D}'"),
        {"J": "0.5", "D": "off"},
    )
    retry = cfg.defaults.retry
    assert (retry.max_attempts, retry.jitter, retry.on_status) == (3, 0.5, frozenset({502}))
    assert cfg.defaults.hold == 0.25
    assert cfg.routes[0].durable is False


def test_previous_secrets_and_sensitive_headers() -> None:
    cfg = load(
        'security:\n  secret: new\n  previous_secrets: [old, "${OLDER}"]\n'
        "  sensitive_headers: [X-Api-Key, x-session]\n" + ROUTE,
        {"OLDER": "older"},
    )
    assert cfg.security.previous_secrets == ("old", "older")
    assert cfg.security.sensitive_headers == frozenset({"x-api-key", "x-session"})
    assert load(ROUTE).security.previous_secrets == ()
    assert load(ROUTE).security.sensitive_headers == frozenset()


NEEDS_SECRET = "needs security.secret: the current secret signs, previous ones only verify"
NOT_A_NAME = "must be an HTTP header name such as X-Api-Key"


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ("previous_secrets: [old]", f"2 security.previous_secrets: {NEEDS_SECRET}"),
        (
            "secret: ${UNSET}\n  previous_secrets: [old]",
            f"3 security.previous_secrets: {NEEDS_SECRET}",
        ),
        (
            "secret: s\n  previous_secrets: [a, '']",
            "3 security.previous_secrets[1]: must not be blank",
        ),
        (
            "secret: s\n  previous_secrets: ['  ']",
            "3 security.previous_secrets[0]: must not be blank",
        ),
        (
            'secret: s\n  previous_secrets: ["${OLD}"]',
            "3 security.previous_secrets[0]: must not be blank",
        ),
        ("secret: s\n  previous_secrets: old", "3 security.previous_secrets: must be a list"),
        ("sensitive_headers: ['X Token']", f"2 security.sensitive_headers[0]: {NOT_A_NAME}"),
        ("sensitive_headers: ['x-a:b']", f"2 security.sensitive_headers[0]: {NOT_A_NAME}"),
        ("sensitive_headers: [ok, '']", "2 security.sensitive_headers[1]: must not be empty"),
    ],
)
def test_bad_rotation_and_sensitive_header_settings_are_refused(
    security: str, message: str
) -> None:
    assert error_of(f"security:\n  {security}\n" + ROUTE) == "cfg.yaml:" + message


def test_errors_never_echo_previous_secrets() -> None:
    message = error_of("security:\n  previous_secrets: [hunter2-old]\n" + ROUTE)
    assert "hunter2" not in message


@pytest.mark.parametrize("key", ["secret", "admin_token"])
def test_unset_optional_security_value_is_none(key: str) -> None:
    cfg = load(f"security:\n  {key}: ${{UNSET_VAR}}\n" + ROUTE)
    assert getattr(cfg.security, key) is None
    cfg = load(f"security:\n  {key}: ${{SET_VAR}}\n" + ROUTE, {"SET_VAR": "v"})
    assert getattr(cfg.security, key) == "v"


@pytest.mark.parametrize("token", ['"   "', '" adm"', '"adm "'])
def test_an_admin_token_that_could_never_match_is_refused(token: str) -> None:
    message = error_of(f"security:\n  admin_token: {token}\n" + ROUTE)
    assert message == (
        "cfg.yaml:2 security.admin_token: must not be blank or begin or end with whitespace"
    )


@pytest.mark.parametrize("key", ["public_url", "sidecar_url"])
def test_unset_optional_url_is_none(key: str) -> None:
    cfg = load(f"server:\n  {key}: ${{UNSET_VAR}}\n" + ROUTE)
    assert getattr(cfg.server, key) is None


@pytest.mark.parametrize(
    ("text", "line", "path", "message"),
    [
        (
            "security:\n  secret: ${DURABLE_SECRET}\n  admin_token: ${DURABLE_SECRET}\n"
            "storage:\n  url: ${DB_URL}\n",
            5,
            "storage.url",
            "environment variable DB_URL is not set",
        ),
        (
            "server:\n  public_url: https://${HOST}/gw\n",
            2,
            "server.public_url",
            "environment variable HOST is not set",
        ),
        (
            "defaults:\n  retry:\n    max_attempts: ${N}\n",
            3,
            "defaults.retry.max_attempts",
            "environment variable N is not set",
        ),
        (
            "security:\n  secret: ${DURABLE SECRET}\n",
            2,
            "security.secret",
            "bad environment reference '${DURABLE SECRET}'",
        ),
        (
            "security:\n  secret: abc${X\n",
            2,
            "security.secret",
            "unclosed '${' (write '$${' for a literal '${')",
        ),
    ],
)
def test_env_errors_name_the_key(text: str, line: int, path: str, message: str) -> None:
    assert error_of(text + ROUTE) == f"cfg.yaml:{line} {path}: {message}"


# ── errors: key path and line ───────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "line", "path", "message"),
    [
        ("server: 8080\n", 1, "server", "must be a mapping of key: value"),
        ("server:\n  admin: 1\n  admin: 2\n", 3, "server.admin", "duplicate key 'admin'"),
        ("server:\n  zzz: 1\n", 2, "server.zzz", "unknown key"),
        ("server:\n  header_timeout: 0s\n", 2, "server.header_timeout", "must be > 0"),
        ("server:\n  max_connections: 0\n", 2, "server.max_connections", "must be >= 1"),
        (
            "defaults:\n  idempotency_scope: [ip, cookie]\n",
            2,
            "defaults.idempotency_scope[1]",
            "must be 'ip', 'header:NAME' or 'query:NAME'",
        ),
        (
            "defaults:\n  idempotency_scope:\n    - header:A\n    - header:a\n",
            4,
            "defaults.idempotency_scope[1]",
            "repeats 'header:a'",
        ),
        # server
        (
            "server:\n  ingress: nowhere\n",
            2,
            "server.ingress",
            "invalid address 'nowhere': expected host:port with a port 1..65535",
        ),
        (
            "server:\n  admin: 0.0.0.0:8080\n",
            2,
            "server.admin",
            "uses the same port as server.ingress",
        ),
        (
            "server:\n  sidecar_url: ftp://h\n",
            2,
            "server.sidecar_url",
            "must be an http:// or https:// URL with a host",
        ),
        (
            "server:\n  public_url: http://h/?q=1\n",
            2,
            "server.public_url",
            "must not have a query or fragment",
        ),
        (
            "server:\n  shutdown_grace: soon\n",
            2,
            "server.shutdown_grace",
            "invalid duration 'soon': use e.g. 250ms, 30s, 5m, 2h, 7d",
        ),
        # storage
        (
            "storage:\n  url: mysql://h/db\n",
            2,
            "storage.url",
            "unknown scheme 'mysql': use sqlite:///relative/path.db or sqlite:////absolute/path.db,"
            " or postgresql://user:password@host:5432/database",
        ),
        (
            "storage:\n  durability: fast\n",
            2,
            "storage.durability",
            "must be one of async, sync",
        ),
        ("storage:\n  retention: 0s\n", 2, "storage.retention", "must be > 0"),
        (
            "security:\n  secret: [a]\n",
            2,
            "security.secret",
            "must be a single value, not a list or mapping",
        ),
        # defaults
        (
            "defaults:\n  retry:\n    max_attempts: 0\n",
            3,
            "defaults.retry.max_attempts",
            "must be >= 1",
        ),
        (
            "defaults:\n  retry:\n    max_attempts: 2.5\n",
            3,
            "defaults.retry.max_attempts",
            "must be an integer",
        ),
        (
            "defaults:\n  retry: {multiplier: x2}\n",
            2,
            "defaults.retry.multiplier",
            "must be a number",
        ),
        ("defaults:\n  max_steps: true\n", 2, "defaults.max_steps", "must be an integer"),
        (
            "defaults:\n  retry: {multiplier: 0.5}\n",
            2,
            "defaults.retry.multiplier",
            "must be >= 1",
        ),
        (
            "defaults:\n  retry: {jitter: 2}\n",
            2,
            "defaults.retry.jitter",
            "must be between 0 and 1",
        ),
        (
            "defaults:\n  retry: {jitter: nan}\n",
            2,
            "defaults.retry.jitter",
            "must be between 0 and 1",
        ),
        (
            "defaults:\n  retry: {initial_backoff: 0ms}\n",
            2,
            "defaults.retry.initial_backoff",
            "must be > 0",
        ),
        (
            "defaults:\n  retry: {initial_backoff: 1m}\n",
            2,
            "defaults.retry.initial_backoff",
            "must be <= max_backoff (30s)",
        ),
        (
            "defaults:\n  retry: {initial_backoff: 2s, max_backoff: 1s}\n",
            2,
            "defaults.retry.max_backoff",
            "must be >= initial_backoff (2s)",
        ),
        (
            "defaults:\n  retry:\n    on: [500,\n      600]\n",
            4,
            "defaults.retry.on[1]",
            "must be a status 100..599, '5xx', 'connect_error' or 'timeout'",
        ),
        ("defaults:\n  retry:\n    on: 500\n", 3, "defaults.retry.on", "must be a list"),
        (
            "defaults:\n  retry:\n    on: [５00]\n",
            3,
            "defaults.retry.on[0]",
            "must be a status 100..599, '5xx', 'connect_error' or 'timeout'",
        ),
        ("defaults:\n  retry:\n    tries: 3\n", 3, "defaults.retry.tries", "unknown key"),
        ("defaults:\n  upstream: http://h\n", 2, "defaults.upstream", "unknown key"),
        ("defaults:\n  attempt_timeout: 0\n", 2, "defaults.attempt_timeout", "must be > 0"),
        (
            "defaults:\n  hold: -1s\n",
            2,
            "defaults.hold",
            "invalid duration '-1s': use e.g. 250ms, 30s, 5m, 2h, 7d",
        ),
        (
            "defaults:\n  max_body: lots\n",
            2,
            "defaults.max_body",
            "invalid size 'lots': use e.g. 512KiB, 10MiB, 100KB or bytes",
        ),
        (
            "defaults:\n  max_step_output: 0\n",
            2,
            "defaults.max_step_output",
            "must be > 0",
        ),
        (
            "defaults:\n  idempotency: maybe\n",
            2,
            "defaults.idempotency",
            "must be one of off, optional, required",
        ),
        ("defaults:\n  on_exhausted:\n", 2, "defaults.on_exhausted", "must not be empty"),
    ],
)
def test_errors_name_key_path_and_line(text: str, line: int, path: str, message: str) -> None:
    assert error_of(text + ROUTE) == f"cfg.yaml:{line} {path}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cfg.yaml routes: at least one route is required"),
        ("# only a comment\n", "cfg.yaml routes: at least one route is required"),
        ("server: {}\n", "cfg.yaml routes: at least one route is required"),
        ("routes: []\n", "cfg.yaml:1 routes: at least one route is required"),
        ("routes:\n", "cfg.yaml:1 routes: at least one route is required"),
        ("routes: {a: 1}\n", "cfg.yaml:1 routes: must be a list"),
        ("routes: [/x]\n", "cfg.yaml:1 routes[0]: must be a mapping of key: value"),
        (
            "- a\n- b\n",
            "cfg.yaml:1: the top level must be a mapping (server:, storage:, routes: …)",
        ),
        ("\nrotues: []\n", "cfg.yaml:2 rotues: unknown key (did you mean 'routes'?)"),
        ("? [a]\n: 1\n", "cfg.yaml:1: keys must be plain names"),
    ],
)
def test_structure_errors(text: str, message: str) -> None:
    assert error_of(text) == message


B = "name: b\nmatch: /x\nupstream: http://h\n"


def route_error(body: str) -> str:
    """Error of a config whose second route (line 5 on) is `body`, indented under `- `."""
    head = "routes:\n  - name: ok\n    match: /ok\n    upstream: http://h\n"
    return error_of(head + "  - " + body.replace("\n", "\n    ") + "\n")


@pytest.mark.parametrize(
    ("body", "line", "path", "message"),
    [
        (
            "name: ok\nmatch: /x\nupstream: http://h",
            5,
            "routes[1].name",
            "duplicate route name 'ok'",
        ),
        ("match: /x\nupstream: http://h", 5, "routes[1].name", "is required"),
        ("name: b\nupstream: http://h", 5, "routes[1].match", "is required"),
        ("name: b\nmatch: /x", 5, "routes[1].upstream", "is required"),
        (
            "name: a b\nmatch: /x\nupstream: http://h",
            5,
            "routes[1].name",
            "may use only letters, digits, '-', '_' and '.'",
        ),
        (
            B + "retyr: {}",
            8,
            "routes[1].retyr",
            "unknown key (did you mean 'retry'?)",
        ),
        (
            B + "retry:\n  max_attempts: 0",
            9,
            "routes[1].retry.max_attempts",
            "must be >= 1",
        ),
        (
            "name: b\nmatch: /x\nupstream: 127.0.0.1:3000",
            7,
            "routes[1].upstream",
            "must be an http:// or https:// URL with a host",
        ),
        (
            "name: b\nmatch: /x\nupstream: http://h:99999",
            7,
            "routes[1].upstream",
            "is not a valid URL",
        ),
        (
            "name: b\nmatch: x\nupstream: http://h",
            6,
            "routes[1].match",
            "must start with '/'",
        ),
        (
            "name: b\nmatch: {path: /a*}\nupstream: http://h",
            6,
            "routes[1].match.path",
            "may use '*' only as a final '/*' (a prefix match)",
        ),
        (
            "name: b\nmatch: {path: '/a?b=1'}\nupstream: http://h",
            6,
            "routes[1].match.path",
            "must not contain a query or fragment",
        ),
        (
            "name: b\nmatch: {methods: [GET]}\nupstream: http://h",
            6,
            "routes[1].match.path",
            "is required",
        ),
        (
            "name: b\nmatch: {path: /x, methods: []}\nupstream: http://h",
            6,
            "routes[1].match.methods",
            "must not be empty (leave it out to match any method)",
        ),
        (
            "name: b\nmatch: {path: /x, methods: [GET, 'P OST']}\nupstream: http://h",
            6,
            "routes[1].match.methods[1]",
            "must be an HTTP method name such as GET or POST",
        ),
        (
            B + "durable: maybe",
            8,
            "routes[1].durable",
            "must be true or false",
        ),
        (
            B + "concurrency: {key: ip}",
            8,
            "routes[1].concurrency.limit",
            "is required",
        ),
        (
            B + "concurrency: {limit: 1, key: cookie:x}",
            8,
            "routes[1].concurrency.key",
            "must be 'ip', 'header:NAME' or 'query:NAME'",
        ),
        (
            B + "rate_limit: {rate: 0/s}",
            8,
            "routes[1].rate_limit.rate",
            "invalid rate '0/s': use a number > 0 per s, m or h, e.g. 10/s, 600/m",
        ),
        (
            B + "rate_limit:\n  rate: 1/s\n  burst: 0",
            10,
            "routes[1].rate_limit.burst",
            "must be >= 1",
        ),
        (
            B + "rate_limit: {rate: 1/s, key: 'header:'}",
            8,
            "routes[1].rate_limit.key",
            "must be 'ip', 'header:NAME' or 'query:NAME'",
        ),
    ],
)
def test_route_errors(body: str, line: int, path: str, message: str) -> None:
    assert route_error(body) == f"cfg.yaml:{line} {path}: {message}"


def test_yaml_syntax_error_has_line() -> None:
    text = "server:\n  ingress: 127.0.0.1:8080\n  admin: [unclosed\nroutes: []\n"
    message = error_of(text)
    assert message.startswith("cfg.yaml:4: invalid YAML: ")


def test_yaml_syntax_error_bad_indent() -> None:
    assert error_of("server:\n  ingress: a\n admin: b\n").startswith("cfg.yaml:3: invalid YAML: ")


# ── storage.url: only what this build can open ──────────────────────────────────

_SQLITE_FORMS = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
_FORMS = f"{_SQLITE_FORMS}, or postgresql://user:password@host:5432/database"
_SLASHES = f"an sqlite URL has three slashes and no host: {_SQLITE_FORMS}"
_QUERY = "an sqlite URL takes no query string or fragment (?… or #…)"
_DIRECTORY = "the sqlite URL names a directory, not a database file"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:", _SLASHES),
        ("sqlite://", _SLASHES),
        ("sqlite:x.db", _SLASHES),
        ("sqlite://host/x.db", _SLASHES),
        ("sqlite:///", f"the sqlite URL names no file: {_SQLITE_FORMS}"),
        ("sqlite:///x.db?mode=ro", _QUERY),
        ("sqlite:///x.db#main", _QUERY),
        (
            "sqlite:///:memory:",
            "sqlite:///:memory: keeps nothing across a restart: name a database file",
        ),
        ("sqlite:///data/", _DIRECTORY),
        ("sqlite:///.", _DIRECTORY),
        ("sqlite:///data/..", _DIRECTORY),
        (
            "postgresql://dg:pw@db:x/durable",
            "the postgresql URL's port is not a number from 1 to 65535",
        ),
        ("postgres://db/", "the postgres URL names no database: add /database after the host"),
        ("postgresql:db/durable", f"a postgresql URL starts with postgresql://: {_FORMS}"),
        ("mysql://h/db", f"unknown scheme 'mysql': {_FORMS}"),
        ("durable.db", f"is not a URL: {_FORMS}"),
        ("s3cret@db:5432/durable", f"is not a URL: {_FORMS}"),
    ],
)
def test_storage_urls_this_build_cannot_open(url: str, message: str) -> None:
    assert error_of(f'storage:\n  url: "{url}"\n' + ROUTE) == f"cfg.yaml:2 storage.url: {message}"


@pytest.mark.parametrize(
    "url", ["postgresql://dg:s3cret@db:x/x", "s3cret@db:5432/x", "sqlite://dg:s3cret@db/x"]
)
def test_storage_url_errors_never_echo_the_url(url: str) -> None:
    message = error_of('storage:\n  url: "${DB}"\n' + ROUTE, {"DB": url})
    assert message.startswith("cfg.yaml:2 storage.url: ") and "s3cret" not in message


def test_postgres_storage_and_cluster_settings() -> None:
    config = load(
        'storage:\n  url: "${DB}"\n  pool: 4\ncluster:\n  node_id: gw-1\n  lease: 3s\n' + ROUTE,
        {"DB": "postgresql://dg:s3cret@db:5432/durable"},
    )
    assert config.storage.url == "postgresql://dg:s3cret@db:5432/durable"
    assert config.storage.pool == 4
    assert (config.cluster.node_id, config.cluster.lease) == ("gw-1", 3.0)
    defaults = load(ROUTE)
    assert (defaults.storage.pool, defaults.cluster.node_id, defaults.cluster.lease) == (
        10,
        None,
        10.0,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("storage:\n  pool: 0\n", "cfg.yaml:2 storage.pool: must be >= 1"),
        ("cluster:\n  lease: 0.5s\n", "cfg.yaml:2 cluster.lease: must be at least 1s"),
        ("cluster:\n  node_id: a b\n", "cfg.yaml:2 cluster.node_id: may use only letters"),
        ("cluster:\n  nodes: 3\n", "cfg.yaml:2 cluster.nodes: unknown key"),
    ],
)
def test_cluster_settings_are_checked(text: str, message: str) -> None:
    assert error_of(text + ROUTE).startswith(message)


def test_storage_url_must_name_a_file_that_can_be_created(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    cases = {
        "dir": f"{tmp_path}/dir is a directory: name a database file inside it",
        "file/x.db": f"the directory of {tmp_path}/file/x.db cannot be created:"
        f" {tmp_path}/file is not a directory",
        "file/deeper/x.db": f"the directory of {tmp_path}/file/deeper/x.db cannot be created:"
        f" {tmp_path}/file is not a directory",
        "link/x.db": f"the directory of {tmp_path}/link/x.db cannot be created:"
        f" {tmp_path}/link is dangling",
    }
    for name, message in cases.items():
        text = f"storage:\n  url: sqlite:///{tmp_path}/{name}\n" + ROUTE
        assert error_of(text) == f"cfg.yaml:2 storage.url: {message}"

    cfg = load(f"storage:\n  url: sqlite:///{tmp_path}/new/sub/x.db\n" + ROUTE)
    assert cfg.storage.url == f"sqlite:///{tmp_path}/new/sub/x.db"
    assert not (tmp_path / "new").exists()  # checked, not created: `check` leaves no trace


def test_default_storage_url_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "durable.db").mkdir()
    message = "(the default) ./durable.db is a directory: name a database file inside it"
    assert error_of(ROUTE) == f"cfg.yaml storage.url: {message}"
    assert error_of("storage: {durability: sync}\n" + ROUTE) == f"cfg.yaml storage.url: {message}"


# ── files ───────────────────────────────────────────────────────────────────────


def test_load_config_reads_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text("# header\n" + ROUTE.replace("/x", "'${P:-/y}'"), encoding="utf-8")
    cfg = load_config("cfg.yaml", env={"P": "/from-env"})
    assert cfg.source == "cfg.yaml" and cfg.routes[0].match.path == "/from-env"
    assert load_config(tmp_path / "cfg.yaml", env={}).routes[0].match.path == "/y"


def test_load_config_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text("# header\ndefaults:\n  retry: {max_attempts: 0}\n" + ROUTE)
    with pytest.raises(ConfigError) as info:
        load_config("cfg.yaml", env={})
    assert str(info.value) == "cfg.yaml:3 defaults.retry.max_attempts: must be >= 1"
    assert (info.value.path, info.value.line) == ("defaults.retry.max_attempts", 3)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: cannot read the file: No such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"routes: [\xff]\n")
    with pytest.raises(ConfigError, match="latin1.yaml: the file is not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_TEST_UPSTREAM", "http://from-os-env:9")
    cfg = load_config_text(ROUTE.replace("http://127.0.0.1:3000", "'${DG_TEST_UPSTREAM}'"))
    assert cfg.routes[0].upstream == "http://from-os-env:9"


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "config.example.yaml", env={})
    assert cfg.server.ingress == ("127.0.0.1", 8080)
    assert (cfg.server.sidecar, cfg.server.admin) == (("127.0.0.1", 8081), ("127.0.0.1", 8082))
    assert cfg.storage.url == "sqlite:///./durable.db"
    assert cfg.security == SecurityConfig()
    demo, plain = cfg.routes
    assert (demo.name, demo.match, demo.upstream) == (
        "demo",
        RouteMatch("/demo/*"),
        "http://127.0.0.1:3000",
    )
    assert demo.durable and demo.settings.hold == 10.0 and demo.settings.retry == RetryPolicy()
    assert (plain.name, plain.match.path, plain.durable) == ("plain", "/static/*", False)
    with_secret = load_config(REPO / "config.example.yaml", env={"DURABLE_SECRET": "s" * 32})
    assert with_secret.security.secret == "s" * 32


def test_example_config_tracing_block_loads_once_uncommented() -> None:
    """The commented-out `tracing:` of config.example.yaml is a working block."""
    text = (REPO / "config.example.yaml").read_text()
    head, _, rest = text.partition("# tracing:")
    block, _, tail = rest.partition("\n\n")
    lines = ("# tracing:" + block).splitlines()
    assert all(line.startswith("#") for line in lines)
    uncommented = "\n".join(line.removeprefix("# ") for line in lines)
    tracing = load_config_text(
        head + uncommented + "\n\n" + tail, source="example", env={"OTLP_TOKEN": "t"}
    ).tracing
    assert tracing.traces_url == "http://127.0.0.1:4318/v1/traces"
    assert tracing.headers == (("Authorization", "Bearer t"),)
    assert tracing.ui_url == "http://127.0.0.1:16686/trace/{trace_id}"


# ── retry budgets and circuit breakers ──────────────────────────────────────────


def test_retry_budget_is_on_by_default_and_inherits_per_field() -> None:
    cfg = load(
        """
defaults:
  retry: {budget: {ratio: 0.5, interval: 30s}}
routes:
  - {name: a, match: /a, upstream: http://h}
  - {name: b, match: /b, upstream: http://h, retry: {budget: {min_per_second: 0}}}
  - {name: c, match: /c, upstream: http://h, retry: {budget: off, max_attempts: 2}}
  - {name: d, match: /d, upstream: http://h, retry: {budget: on}}
"""
    )
    assert RetryPolicy().budget == RetryBudget(ratio=0.2, min_per_second=10.0, interval=10.0)
    base = RetryBudget(ratio=0.5, min_per_second=10.0, interval=30.0)
    a, b, c, d = (route.settings.retry for route in cfg.routes)
    assert a.budget == base
    assert b.budget == dataclasses.replace(base, min_per_second=0.0)
    assert c.budget is None and c.max_attempts == 2
    assert d.budget == base


def test_circuit_breaker_is_off_by_default_and_inherits_per_field() -> None:
    assert RouteSettings().circuit_breaker is None
    cfg = load(
        """
defaults:
  circuit_breaker: {failures: 3}
routes:
  - {name: a, match: /a, upstream: http://h1}
  - {name: b, match: /b, upstream: http://h2, circuit_breaker: {interval: 250ms}}
  - {name: c, match: /c, upstream: http://h3, circuit_breaker: off}
"""
    )
    a, b, c = (route.settings.circuit_breaker for route in cfg.routes)
    assert a == CircuitBreakerConfig(failures=3, interval=5.0)
    assert b == CircuitBreakerConfig(failures=3, interval=0.25)
    assert c is None
    assert load(ROUTE.replace("}\n", ", circuit_breaker: {}}\n")).routes[0].settings == (
        RouteSettings(circuit_breaker=CircuitBreakerConfig())
    )


@pytest.mark.parametrize(
    ("text", "line", "path", "message"),
    [
        (
            "defaults:\n  retry:\n    budget: {ratio: 0}\n",
            3,
            "defaults.retry.budget.ratio",
            "must be > 0 and <= 1",
        ),
        (
            "defaults:\n  retry:\n    budget: {ratio: 1.5}\n",
            3,
            "defaults.retry.budget.ratio",
            "must be > 0 and <= 1",
        ),
        (
            "defaults:\n  retry:\n    budget: {min_per_second: -1}\n",
            3,
            "defaults.retry.budget.min_per_second",
            "must be >= 0",
        ),
        (
            "defaults:\n  retry:\n    budget: {interval: 0s}\n",
            3,
            "defaults.retry.budget.interval",
            "must be > 0",
        ),
        (
            "defaults:\n  retry:\n    budget: {percent: 20}\n",
            3,
            "defaults.retry.budget.percent",
            "unknown key",
        ),
        (
            "defaults:\n  retry:\n    budget: some\n",
            3,
            "defaults.retry.budget",
            "must be a mapping (ratio, min_per_second, interval), or off",
        ),
        (
            "defaults:\n  circuit_breaker: {failures: 0}\n",
            2,
            "defaults.circuit_breaker.failures",
            "must be >= 1",
        ),
        (
            "defaults:\n  circuit_breaker:\n    interval: soon\n",
            3,
            "defaults.circuit_breaker.interval",
            "invalid duration 'soon': use e.g. 250ms, 30s, 5m, 2h, 7d",
        ),
        (
            "defaults:\n  circuit_breaker: [5]\n",
            2,
            "defaults.circuit_breaker",
            "must be a mapping of key: value",
        ),
    ],
)
def test_budget_and_breaker_errors_name_key_path_and_line(
    text: str, line: int, path: str, message: str
) -> None:
    assert error_of(text + ROUTE) == f"cfg.yaml:{line} {path}: {message}"


SHARED = (
    "differs from the circuit_breaker of routes[0], which has the same upstream host and"
    " port: routes to one upstream share its breaker"
)


@pytest.mark.parametrize(
    ("second", "where"),
    [
        # Another spelling of the same origin, with its own settings: blamed there.
        (
            "{name: b, match: /b, upstream: 'HTTP://H:80/x', circuit_breaker: {failures: 2}}",
            "cfg.yaml:4 routes[1].circuit_breaker",
        ),
        # Inheriting the defaults while the first route set its own: blamed at upstream.
        ("{name: b, match: /b, upstream: http://h/y}", "cfg.yaml:4 routes[1].upstream"),
    ],
)
def test_routes_to_one_upstream_must_agree_on_its_breaker(second: str, where: str) -> None:
    text = (
        "defaults: {circuit_breaker: {failures: 5}}\nroutes:\n"
        "  - {name: a, match: /a, upstream: http://h, circuit_breaker: {failures: 3}}\n"
        f"  - {second}\n"
    )
    assert error_of(text) == f"{where}: {SHARED}"


def test_routes_to_one_upstream_may_differ_when_one_has_no_breaker() -> None:
    cfg = load(
        "routes:\n"
        "  - {name: a, match: /a, upstream: http://h, circuit_breaker: {failures: 3}}\n"
        "  - {name: b, match: /b, upstream: http://h}\n"
        "  - {name: c, match: /c, upstream: http://h, durable: false, circuit_breaker: {}}\n"
        "  - {name: d, match: /d, upstream: 'https://h', circuit_breaker: {failures: 9}}\n"
    )
    assert [r.origin for r in cfg.routes] == ["http://h:80"] * 3 + ["https://h:443"]


# ── the admin listener beyond loopback ──────────────────────────────────────────


@pytest.mark.parametrize(
    "admin", ["127.0.0.1:9000", "127.8.9.10:9000", "localhost:9000", "'[::1]:9000'"]
)
def test_an_admin_listener_on_loopback_needs_no_token(admin: str) -> None:
    assert load(f"server:\n  admin: {admin}\n" + ROUTE).security.admin_token is None


@pytest.mark.parametrize(
    ("admin", "host"),
    [
        ("0.0.0.0:9000", "0.0.0.0"),
        (":9000", "0.0.0.0"),
        ("'[::]:9000'", "::"),
        ("10.1.2.3:9000", "10.1.2.3"),
        ("admin.internal:9000", "admin.internal"),  # a name may resolve anywhere
    ],
)
def test_an_admin_listener_beyond_loopback_needs_a_token(admin: str, host: str) -> None:
    text = f"server:\n  ingress: 127.0.0.1:8000\n  admin: {admin}\n"
    assert error_of(text + ROUTE) == (
        f"cfg.yaml:3 server.admin: listens on {host}, beyond loopback, without"
        " security.admin_token: set a token, or bind the admin listener to 127.0.0.1"
    )
    # An unset variable leaves the token out: refused the same way.
    unset = text + "security: {admin_token: '${ADMIN_TOKEN}'}\n" + ROUTE
    assert error_of(unset).startswith("cfg.yaml:3 server.admin: listens on")
    assert load(unset, env={"ADMIN_TOKEN": "t0ken"}).security.admin_token == "t0ken"


# ── tracing ─────────────────────────────────────────────────────────────────────


def test_tracing_is_off_by_default() -> None:
    for text in (ROUTE, "tracing:\n" + ROUTE, "tracing:\n  otlp_endpoint:\n" + ROUTE):
        tracing = load(text).tracing
        assert tracing == TracingConfig()
        assert not tracing.enabled and tracing.traces_url is None
    assert TracingConfig() == TracingConfig(
        otlp_endpoint=None,
        service_name="durable-gateway",
        sample_ratio=1.0,
        resource_attributes=(),
        headers=(),
        ui_url=None,
    )


def test_every_tracing_setting_is_read() -> None:
    tracing = load(
        """
tracing:
  otlp_endpoint: http://collector:4318/
  service_name: gateway-eu
  sample_ratio: 0.25
  resource_attributes:
    deployment.environment: prod
    service.version: 7
  headers:
    Authorization: Bearer t0ken
    X-Scope-OrgID: shop
  ui_url: http://jaeger:16686/trace/{trace_id}
"""
        + ROUTE
    ).tracing
    assert tracing == TracingConfig(
        otlp_endpoint="http://collector:4318",
        service_name="gateway-eu",
        sample_ratio=0.25,
        resource_attributes=(("deployment.environment", "prod"), ("service.version", "7")),
        headers=(("Authorization", "Bearer t0ken"), ("X-Scope-OrgID", "shop")),
        ui_url="http://jaeger:16686/trace/{trace_id}",
    )
    assert tracing.enabled


@pytest.mark.parametrize("ratio", ["0", "1", "0.001"])
def test_a_sample_ratio_may_be_either_bound(ratio: str) -> None:
    text = f"tracing: {{otlp_endpoint: http://c:4318, sample_ratio: {ratio}}}\n"
    assert load(text + ROUTE).tracing.sample_ratio == float(ratio)


def test_an_unset_endpoint_variable_leaves_tracing_off() -> None:
    text = "tracing:\n  otlp_endpoint: ${OTLP_ENDPOINT:-}\n" + ROUTE
    assert not load(text).tracing.enabled
    on = load(text, env={"OTLP_ENDPOINT": "https://otlp.example.com"}).tracing
    assert on.traces_url == "https://otlp.example.com/v1/traces"


@pytest.mark.parametrize(
    ("endpoint", "traces_url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otlp.example.com", "https://otlp.example.com/v1/traces"),
        # A path is the full traces URL, kept as written: a vendor's may differ.
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("https://api.vendor.io/otlp/v1/traces/", "https://api.vendor.io/otlp/v1/traces"),
        ("https://api.vendor.io/ingest", "https://api.vendor.io/ingest"),
    ],
)
def test_traces_url_adds_the_signal_path_to_a_base_url_only(endpoint: str, traces_url: str) -> None:
    text = f"tracing:\n  otlp_endpoint: {endpoint}\n" + ROUTE
    assert load(text).tracing.traces_url == traces_url


@pytest.mark.parametrize(
    ("text", "line", "path", "message"),
    [
        ("tracing: on\n", 1, "tracing", "must be a mapping of key: value"),
        (
            "tracing:\n  endpoint: http://c:4318\n",
            2,
            "tracing.endpoint",
            "unknown key (did you mean 'otlp_endpoint'?)",
        ),
        (
            "tracing:\n  otlp_endpoint: collector:4318\n",
            2,
            "tracing.otlp_endpoint",
            "must be an http:// or https:// URL with a host",
        ),
        (
            "tracing:\n  otlp_endpoint: grpc://collector:4317\n",
            2,
            "tracing.otlp_endpoint",
            "must be an http:// or https:// URL with a host",
        ),
        (
            "tracing:\n  otlp_endpoint: 'http://c:4318/v1/traces?key=1'\n",
            2,
            "tracing.otlp_endpoint",
            "must not have a query or fragment",
        ),
        (
            "tracing:\n  otlp_endpoint: 'http://c:99999'\n",
            2,
            "tracing.otlp_endpoint",
            "is not a valid URL",
        ),
        ("tracing:\n  sample_ratio: 1.5\n", 2, "tracing.sample_ratio", "must be between 0 and 1"),
        ("tracing:\n  sample_ratio: -0.1\n", 2, "tracing.sample_ratio", "must be between 0 and 1"),
        ("tracing:\n  sample_ratio: 10%\n", 2, "tracing.sample_ratio", "must be a number"),
        ("tracing:\n  service_name: ''\n", 2, "tracing.service_name", "must not be empty"),
        (
            "tracing:\n  ui_url: http://jaeger:16686/trace/\n",
            2,
            "tracing.ui_url",
            "must contain {trace_id}, e.g. http://jaeger:16686/trace/{trace_id}",
        ),
        (
            "tracing:\n  ui_url: 'jaeger:16686/trace/{trace_id}'\n",
            2,
            "tracing.ui_url",
            "must be an http:// or https:// URL with a host",
        ),
        (
            "tracing:\n  headers:\n    Authorization: a\n    X Api Key: b\n",
            4,
            "tracing.headers.X Api Key",
            "must be an HTTP header name such as Authorization",
        ),
        (
            "tracing:\n  headers:\n    X-Api-Key: [a, b]\n",
            3,
            "tracing.headers.X-Api-Key",
            "must be a single value, not a list or mapping",
        ),
        (
            "tracing:\n  headers: [Authorization]\n",
            2,
            "tracing.headers",
            "must be a mapping of name: value",
        ),
        (
            "tracing:\n  resource_attributes: deployment.environment=prod\n",
            2,
            "tracing.resource_attributes",
            "must be a mapping of name: value",
        ),
        (
            "tracing:\n  resource_attributes:\n    a: 1\n    a: 2\n",
            4,
            "tracing.resource_attributes.a",
            "duplicate key 'a'",
        ),
    ],
)
def test_tracing_errors_name_key_path_and_line(
    text: str, line: int, path: str, message: str
) -> None:
    assert error_of(text + ROUTE) == f"cfg.yaml:{line} {path}: {message}"


@pytest.mark.parametrize(
    ("headers", "where"),
    [
        ("{X-Api-Key: a, x-api-key: b}", "cfg.yaml:2 tracing.headers.x-api-key:"),
        ('{X-Api-Key: "a\\r\\nHost: b"}', "cfg.yaml:2 tracing.headers.X-Api-Key:"),
    ],
)
def test_tracing_headers_that_could_not_be_sent_are_refused(headers: str, where: str) -> None:
    assert error_of(f"tracing:\n  headers: {headers}\n" + ROUTE).startswith(where)
