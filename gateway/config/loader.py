"""Startup edge: YAML text → `GatewayConfig`, with `${ENV}` expanded per scalar value.

Every problem becomes a ConfigError naming the key path and line; it never returns a
half-valid config and never echoes secrets (secret, admin_token, storage URL) in errors
(an SQLite file's path may appear: it holds no credentials).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from gateway.config.model import (
    CircuitBreakerConfig,
    ClusterConfig,
    ConcurrencyConfig,
    Durability,
    ErrorKind,
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
)
from gateway.config.storage_url import SqliteUrl, check_sqlite_path, parse_storage_url
from gateway.errors import ConfigError
from step_protocol import wire

__all__ = [
    "load_config",
    "load_config_text",
    "parse_address",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

# ── pure value parsers ──────────────────────────────────────────────────────────

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # ASCII only: `\d` would take "٣"
_SIZE = re.compile(rf"({_NUMBER})\s*([kmgt]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1} | {
    f"{p}{i}b": (1024 if i else 1000) ** n for n, p in enumerate("kmgt", start=1) for i in ("", "i")
}
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An RFC 9110 field name (a token)."""


def parse_duration(text: str | float) -> float:
    """Seconds from `250ms`, `30s`, `5m`, `2h`, `7d`, `1h30m`, or a bare number of seconds.

    The grammar and the ceiling (`wire.MAX_DURATION`, 10 years) are the step protocol's,
    so a config and a backend's `timeout` read alike, and no setting can overflow a
    timer; only the error keeps the config's own wording.
    """
    try:
        seconds = wire.parse_duration(text, maximum=math.inf)
    except ValueError:
        raise ValueError(
            f"invalid duration {str(text)[:64]!r}: use e.g. 250ms, 30s, 5m, 2h, 7d"
        ) from None
    if seconds > wire.MAX_DURATION:
        raise ValueError(f"duration {str(text)!r} is too long: at most {wire.MAX_DURATION_TEXT}")
    return seconds


def parse_size(text: str | int) -> int:
    """Bytes from `512B`, `100KB`/`10MB` (decimal), `512KiB`/`10MiB`/`1GiB`, or bare bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must be >= 0")
        return text
    s = str(text).strip()
    m = _SIZE.fullmatch(s)
    if m is None or (m[2] is None and not m[1].isdigit()):
        raise ValueError(f"invalid size {str(text)!r}: use e.g. 512KiB, 10MiB, 100KB or bytes")
    value = Decimal(m[1]) * _SIZE_UNITS[(m[2] or "b").lower()]
    if value != value.to_integral_value():
        raise ValueError(f"invalid size {s!r}: not a whole number of bytes")
    return int(value)


def parse_address(text: str | int) -> tuple[str, int]:
    """`(host, port)` from `host:port`, `[::1]:port`, `:port` or a bare port (host 0.0.0.0)."""
    s = str(text).strip()
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = "", s
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {s!r}: bad IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"invalid address {s!r}: write IPv6 hosts in brackets, e.g. [::1]:8080")
    elif host and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid address {s!r}: bad host name")
    if not re.fullmatch("[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid address {s!r}: expected host:port with a port 1..65535")
    return host or "0.0.0.0", int(port)


def parse_rate(text: str | float) -> float:
    """Events per second from `10/s`, `600/m`, `3600/h`, `100/10s`, or a bare number per second."""
    s = str(text).strip()
    count, sep, per = s.partition("/")
    per = per.strip()
    try:
        if not re.fullmatch(_NUMBER, count.strip()) or (sep and not per):
            raise ValueError(s)
        rate = float(count) / parse_duration("1" + per if per.isalpha() else per or "1")
    except (ValueError, ZeroDivisionError):
        rate = 0.0
    if rate <= 0:
        raise ValueError(f"invalid rate {s!r}: use a number > 0 per s, m or h, e.g. 10/s, 600/m")
    return rate


# ── YAML nodes with key paths ───────────────────────────────────────────────────

_T = TypeVar("_T")
_NULL_TAG = "tag:yaml.org,2002:null"
_VAR_REF = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


@dataclass(frozen=True, slots=True)
class _At:
    """A YAML node plus its key path, so any value read from it can say where it was."""

    node: yaml.Node
    path: str
    source: str
    env: Mapping[str, str]

    def error(self, message: str) -> ConfigError:
        mark = self.node.start_mark
        line = mark.line + 1 if mark is not None else None
        return ConfigError(self.path, message, line=line, source=self.source)

    def child(self, key: str | int, node: yaml.Node) -> _At:
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        return _At(node, path, self.source, self.env)


def _expand(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand `${VAR}` / `${VAR:-default}` (`$${` is a literal `${`); also return unset names."""
    unset: list[str] = []

    def one(m: re.Match[str]) -> str:
        if m[0] == "$${":
            return "${"
        body = m["body"]
        if body is None:
            raise ValueError("unclosed '${' (write '$${' for a literal '${')")
        name, has_default, default = body.partition(":-")
        if not _VAR_NAME.fullmatch(name):
            raise ValueError(f"bad environment reference '${{{body}}}'")
        value = env.get(name)
        if has_default and not value:  # like the shell: unset or empty takes the default
            return default
        if value is None:
            unset.append(name)
            return ""
        return value

    return _VAR_REF.sub(one, text), unset


def _fields(at: _At, allowed: Collection[str], required: Collection[str] = ()) -> dict[str, _At]:
    """The mapping's values by key; unknown, repeated or missing keys are errors."""
    if at.node.tag == _NULL_TAG and not required:
        return {}
    if not isinstance(at.node, yaml.MappingNode):
        raise at.error("must be a mapping of key: value")
    out: dict[str, _At] = {}
    for key_node, value_node in at.node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL_TAG:
            raise _At(key_node, at.path, at.source, at.env).error("keys must be plain names")
        key = key_node.value
        value = at.child(key, value_node)
        if key in out:
            raise value.error(f"duplicate key '{key}'")
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise value.error(f"unknown key{hint}")
        out[key] = value
    for key in required:
        if key not in out:
            raise at.child(key, at.node).error("is required")
    return out


def _items(at: _At) -> list[_At]:
    if at.node.tag == _NULL_TAG:
        return []
    if not isinstance(at.node, yaml.SequenceNode):
        raise at.error("must be a list")
    return [at.child(i, node) for i, node in enumerate(at.node.value)]


def _text(at: _At, *, optional: bool = False) -> str | None:
    """The scalar's text after `${VAR}` expansion; None for an optional field left empty."""
    if not isinstance(at.node, yaml.ScalarNode):
        raise at.error("must be a single value, not a list or mapping")
    if at.node.tag == _NULL_TAG:
        if optional:
            return None
        raise at.error("must not be empty")
    try:
        text, unset = _expand(at.node.value, at.env)
    except ValueError as e:
        raise at.error(str(e)) from None
    if optional and not text:  # `secret: ${DURABLE_SECRET}` with the variable unset
        return None
    if unset:
        raise at.error(f"environment variable {unset[0]} is not set")
    return text


def _string(at: _At) -> str:
    text = _text(at)
    if not text:
        raise at.error("must not be empty")
    return text


def _parsed(at: _At, parse: Callable[[str], _T], problem: str | None = None) -> _T:
    """`parse` applied to the scalar; its ValueError (or `problem`) becomes a ConfigError."""
    try:
        return parse(_string(at))
    except ValueError as e:
        raise at.error(problem or str(e)) from None


def _int(at: _At, minimum: int) -> int:
    value = _parsed(at, int, "must be an integer")  # int() takes "-3" and "1_000", not "3.0"
    if value < minimum:
        raise at.error(f"must be >= {minimum}")
    return value


def _number(at: _At, low: float, high: float = math.inf) -> float:
    value = _parsed(at, float, "must be a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise at.error(
            f"must be between {low:g} and {high:g}" if high < math.inf else f"must be >= {low:g}"
        )
    return value


def _duration(at: _At, *, positive: bool = False) -> float:
    value = _parsed(at, parse_duration)
    if positive and value <= 0:
        raise at.error("must be > 0")
    return value


def _size(at: _At, *, positive: bool = False) -> int:
    value = _parsed(at, parse_size)
    if positive and value <= 0:
        raise at.error("must be > 0")
    return value


def _bool(at: _At) -> bool:
    word = _string(at).lower()
    if word not in _BOOLS:
        raise at.error("must be true or false")
    return _BOOLS[word]


def _choice(at: _At, options: tuple[str, ...]) -> str:
    value = _string(at)
    if value not in options:
        raise at.error(f"must be one of {', '.join(options)}")
    return value


def _url(at: _At, text: str) -> str:
    """An http(s) base URL without trailing slash; the value is kept out of messages."""
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise at.error("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise at.error("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise at.error("must not have a query or fragment")
    return text.rstrip("/")


def _optional_url(fields: Mapping[str, _At], key: str) -> str | None:
    text = _text(fields[key], optional=True) if key in fields else None
    return None if text is None else _url(fields[key], text)


def _key(at: _At) -> str:
    """A limiter key: `ip`, `header:NAME` (lower-cased) or `query:NAME`."""
    value = _string(at)
    kind, _, name = value.partition(":")
    if value == "ip":
        return value
    if kind == "header" and _HEADER_NAME.fullmatch(name):
        return f"header:{name.lower()}"
    if kind == "query" and name:
        return value
    raise at.error("must be 'ip', 'header:NAME' or 'query:NAME'")


def _keys(at: _At) -> tuple[str, ...]:
    """A list of limiter keys, each once, in the order given."""
    keys = [_key(item) for item in _items(at)]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise _items(at)[i].error(f"repeats '{key}'")
    return tuple(keys)


# ── sections ────────────────────────────────────────────────────────────────────


def _retry_on(at: _At) -> tuple[frozenset[int], frozenset[ErrorKind]]:
    statuses: set[int] = set()
    errors: set[ErrorKind] = set()
    for item in _items(at):
        word = _string(item).lower()
        if word in ("connect_error", "timeout"):
            errors.add("connect_error" if word == "connect_error" else "timeout")
        elif re.fullmatch(r"[1-5]xx", word):
            base = int(word[0]) * 100
            statuses.update(range(base, base + 100))
        elif re.fullmatch("[1-5][0-9][0-9]", word):
            statuses.add(int(word))
        else:
            raise item.error("must be a status 100..599, '5xx', 'connect_error' or 'timeout'")
    return frozenset(statuses), frozenset(errors)


_RETRY_READERS: dict[str, Callable[[_At], object]] = {
    "max_attempts": lambda at: _int(at, 1),
    "initial_backoff": lambda at: _duration(at, positive=True),
    "max_backoff": lambda at: _duration(at, positive=True),
    "multiplier": lambda at: _number(at, 1.0),
    "jitter": lambda at: _number(at, 0.0, 1.0),
}


def _ratio(at: _At) -> float:
    value = _parsed(at, float, "must be a number")
    if not math.isfinite(value) or not 0 < value <= 1:
        raise at.error("must be > 0 and <= 1")
    return value


_BUDGET_READERS: dict[str, Callable[[_At], object]] = {
    "ratio": _ratio,
    "min_per_second": lambda at: _number(at, 0.0),
    "interval": lambda at: _duration(at, positive=True),
}
_BREAKER_READERS: dict[str, Callable[[_At], object]] = {
    "failures": lambda at: _int(at, 1),
    "interval": lambda at: _duration(at, positive=True),
}
_Switchable = TypeVar("_Switchable", RetryBudget, CircuitBreakerConfig)


def _switchable(
    at: _At, base: _Switchable, readers: Mapping[str, Callable[[_At], object]]
) -> _Switchable | None:
    """A guard that may be `off` (None), `on` (`base`: the inherited one, else the
    defaults), or a mapping that overrides `base` field by field."""
    if isinstance(at.node, yaml.ScalarNode) and at.node.tag != _NULL_TAG:
        word = _string(at).lower()
        if word not in _BOOLS:
            raise at.error(f"must be a mapping ({', '.join(readers)}), or off")
        return base if _BOOLS[word] else None
    fields = _fields(at, readers)
    changes: dict[str, Any] = {k: read(fields[k]) for k, read in readers.items() if k in fields}
    return replace(base, **changes)


def _retry(at: _At, base: RetryPolicy) -> RetryPolicy:
    """`base` with the fields this mapping sets; the rest are inherited one by one."""
    fields = _fields(at, [*_RETRY_READERS, "on", "budget"])
    changes: dict[str, Any] = {
        k: read(fields[k]) for k, read in _RETRY_READERS.items() if k in fields
    }
    if "on" in fields:
        changes["on_status"], changes["on_errors"] = _retry_on(fields["on"])
    if "budget" in fields:
        budget = base.budget or RetryBudget()
        changes["budget"] = _switchable(fields["budget"], budget, _BUDGET_READERS)
    policy = replace(base, **changes)
    if policy.max_backoff < policy.initial_backoff:
        if "max_backoff" in fields:
            raise fields["max_backoff"].error(
                f"must be >= initial_backoff ({policy.initial_backoff:g}s)"
            )
        raise fields["initial_backoff"].error(f"must be <= max_backoff ({policy.max_backoff:g}s)")
    return policy


_SETTING_READERS: dict[str, Callable[[_At], object]] = {
    "attempt_timeout": lambda at: _duration(at, positive=True),
    "hold": _duration,
    "max_body": _size,  # 0 is allowed: a route that takes no request bodies
    "max_response": _size,  # 0 keeps no streamed body: every result URL of the route is 410
    "max_step_output": lambda at: _size(at, positive=True),
    "max_run_state": lambda at: _size(at, positive=True),
    "max_steps": lambda at: _int(at, 1),
    "idempotency": lambda at: _choice(at, ("off", "optional", "required")),
    "idempotency_scope": _keys,
    "on_exhausted": lambda at: _choice(at, ("fail", "pause")),
}
_SETTING_KEYS = frozenset(f.name for f in dataclasses.fields(RouteSettings))


def _settings(fields: Mapping[str, _At], base: RouteSettings) -> RouteSettings:
    """`base` overridden per field by what is set here (and per sub-field for `retry`)."""
    changes: dict[str, Any] = {
        k: read(fields[k]) for k, read in _SETTING_READERS.items() if k in fields
    }
    if "retry" in fields:
        changes["retry"] = _retry(fields["retry"], base.retry)
    if "circuit_breaker" in fields:
        breaker = base.circuit_breaker or CircuitBreakerConfig()
        changes["circuit_breaker"] = _switchable(
            fields["circuit_breaker"], breaker, _BREAKER_READERS
        )
    return replace(base, **changes)


_SERVER_KEYS = tuple(x.name for x in dataclasses.fields(ServerConfig))


def _is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; other names may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server(at: _At) -> ServerConfig:
    f = _fields(at, _SERVER_KEYS)
    base = ServerConfig()
    names = ("ingress", "sidecar", "admin")
    bound = {k: _parsed(f[k], parse_address) if k in f else getattr(base, k) for k in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (host_a, port_a), (host_b, port_b) = bound[a], bound[b]
            if port_a == port_b and (host_a == host_b or {"0.0.0.0", "::"} & {host_a, host_b}):
                blame, other = (b, a) if b in f else (a, b)
                raise f[blame].error(f"uses the same port as server.{other}")
    grace = _duration(f["shutdown_grace"]) if "shutdown_grace" in f else base.shutdown_grace
    timeouts: dict[str, float] = {
        k: _duration(f[k], positive=True) if k in f else getattr(base, k)
        for k in ("header_timeout", "body_timeout", "keepalive_timeout")
    }
    return ServerConfig(
        **bound,
        public_url=_optional_url(f, "public_url"),
        sidecar_url=_optional_url(f, "sidecar_url"),
        shutdown_grace=grace,
        header_timeout=timeouts["header_timeout"],
        body_timeout=timeouts["body_timeout"],
        keepalive_timeout=timeouts["keepalive_timeout"],
        max_connections=(
            _int(f["max_connections"], 1) if "max_connections" in f else base.max_connections
        ),
    )


def _storage_url(url: str) -> str:
    """`url` if this build can open a store there; else ValueError, never echoing it.

    The same parser as the stores' (`storage_url`), plus what only a configuration
    refuses: a store in memory, which would keep nothing across a restart.
    """
    parsed = parse_storage_url(url)
    if parsed.in_memory:
        raise ValueError("sqlite:///:memory: keeps nothing across a restart: name a database file")
    if isinstance(parsed, SqliteUrl):
        check_sqlite_path(parsed.path)
    return url


def _storage(at: _At | None, source: str) -> StorageConfig:
    """The `storage:` section; `at` None when it is absent (its default URL is checked too)."""
    f = _fields(at, ["url", "durability", "retention", "pool"]) if at is not None else {}
    base = StorageConfig()
    if "url" in f:
        url = _parsed(f["url"], _storage_url)
    else:
        try:
            url = _storage_url(base.url)
        except ValueError as e:
            raise ConfigError("storage.url", f"(the default) {e}", source=source) from None
    durability = (
        _choice(f["durability"], ("async", "sync")) if "durability" in f else base.durability
    )
    retention = _duration(f["retention"], positive=True) if "retention" in f else base.retention
    return StorageConfig(
        url=url,
        durability=cast(Durability, durability),
        retention=retention,
        pool=_int(f["pool"], 1) if "pool" in f else base.pool,
    )


def _cluster(at: _At) -> ClusterConfig:
    f = _fields(at, ["node_id", "lease"])
    node_id = None
    if "node_id" in f:
        node_id = _string(f["node_id"])
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", node_id):
            raise f["node_id"].error("may use only letters, digits, '-', '_', '.' and ':' (<= 100)")
    lease = ClusterConfig().lease
    if "lease" in f:
        lease = _duration(f["lease"])
        if lease < 1:
            raise f["lease"].error("must be at least 1s (leases are renewed every lease / 3)")
    return ClusterConfig(node_id=node_id, lease=lease)


def _security(at: _At) -> SecurityConfig:
    f = _fields(at, ["secret", "admin_token", "previous_secrets", "sensitive_headers"])
    admin_token = _text(f["admin_token"], optional=True) if "admin_token" in f else None
    if admin_token is not None and admin_token != admin_token.strip():
        # The header's value is read without surrounding spaces: it could never match.
        raise f["admin_token"].error("must not be blank or begin or end with whitespace")
    secret = _text(f["secret"], optional=True) if "secret" in f else None
    previous: list[str] = []
    for item in _items(f["previous_secrets"]) if "previous_secrets" in f else ():
        text = _text(item, optional=True)
        if text is None or not text.strip():
            raise item.error("must not be blank")
        previous.append(text)
    if previous and secret is None:
        raise f["previous_secrets"].error(
            "needs security.secret: the current secret signs, previous ones only verify"
        )
    sensitive: set[str] = set()
    for item in _items(f["sensitive_headers"]) if "sensitive_headers" in f else ():
        name = _string(item)
        if not _HEADER_NAME.fullmatch(name):
            raise item.error("must be an HTTP header name such as X-Api-Key")
        sensitive.add(name.lower())
    return SecurityConfig(
        secret=secret,
        admin_token=admin_token,
        previous_secrets=tuple(previous),
        sensitive_headers=frozenset(sensitive),
    )


def _tracing(at: _At) -> TracingConfig:
    f = _fields(
        at,
        [
            "otlp_endpoint",
            "service_name",
            "sample_ratio",
            "resource_attributes",
            "headers",
            "ui_url",
        ],
    )
    endpoint = _optional_url(f, "otlp_endpoint")
    ui_url = _text(f["ui_url"], optional=True) if "ui_url" in f else None
    if ui_url is not None:
        if "{trace_id}" not in ui_url:
            raise f["ui_url"].error(
                "must contain {trace_id}, e.g. http://jaeger:16686/trace/{trace_id}"
            )
        _url(f["ui_url"], ui_url.replace("{trace_id}", "0"))
    base = TracingConfig()
    return TracingConfig(
        otlp_endpoint=endpoint,
        service_name=_string(f["service_name"]) if "service_name" in f else base.service_name,
        sample_ratio=_number(f["sample_ratio"], 0.0, 1.0) if "sample_ratio" in f else 1.0,
        resource_attributes=_pairs(f["resource_attributes"]) if "resource_attributes" in f else (),
        headers=_pairs(f["headers"], header_names=True) if "headers" in f else (),
        ui_url=ui_url,
    )


def _pairs(at: _At, *, header_names: bool = False) -> tuple[tuple[str, str], ...]:
    """A mapping of names to single values, in the file's order."""
    if not isinstance(at.node, yaml.MappingNode):
        if at.node.tag == _NULL_TAG:
            return ()
        raise at.error("must be a mapping of name: value")
    names = [key.value for key, _ in at.node.value if isinstance(key, yaml.ScalarNode)]
    pairs: list[tuple[str, str]] = []
    for name, value in _fields(at, names).items():
        text = _string(value)
        if header_names:
            if not _HEADER_NAME.fullmatch(name):
                raise value.error("must be an HTTP header name such as Authorization")
            if any(name.lower() == seen.lower() for seen, _ in pairs):
                raise value.error("repeats a header named above (names ignore case)")
            if any(ord(c) < 0x20 and c != "\t" or c == "\x7f" for c in text):
                raise value.error("must not contain control characters such as line breaks")
        pairs.append((name, text))
    return tuple(pairs)


def _match(at: _At) -> RouteMatch:
    scalar = isinstance(at.node, yaml.ScalarNode)  # `match: /api/*` is short for {path: /api/*}
    f = {"path": at} if scalar else _fields(at, ["path", "methods"], ["path"])
    path = _string(f["path"])
    if not path.startswith("/"):
        raise f["path"].error("must start with '/'")
    if "*" in path.removesuffix("/*"):
        raise f["path"].error("may use '*' only as a final '/*' (a prefix match)")
    if "?" in path or "#" in path:
        raise f["path"].error("must not contain a query or fragment")
    if "methods" not in f or f["methods"].node.tag == _NULL_TAG:
        return RouteMatch(path=path)
    methods: set[str] = set()
    for item in _items(f["methods"]):
        name = _string(item)
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise item.error("must be an HTTP method name such as GET or POST")
        methods.add(name.upper())
    if not methods:
        raise f["methods"].error("must not be empty (leave it out to match any method)")
    return RouteMatch(path=path, methods=frozenset(methods))


def _concurrency(at: _At) -> ConcurrencyConfig:
    f = _fields(at, ["limit", "key", "queue_timeout"], ["limit"])
    return ConcurrencyConfig(
        limit=_int(f["limit"], 1),
        key=_key(f["key"]) if "key" in f else None,
        queue_timeout=_duration(f["queue_timeout"]) if "queue_timeout" in f else 30.0,
    )


def _rate_limit(at: _At) -> RateLimitConfig:
    f = _fields(at, ["rate", "burst", "key"], ["rate"])
    rate = _parsed(f["rate"], parse_rate)
    return RateLimitConfig(
        rate=rate,
        burst=_int(f["burst"], 1) if "burst" in f else max(1, math.ceil(rate)),
        key=_key(f["key"]) if "key" in f else None,
    )


_ROUTE_KEYS = _SETTING_KEYS | {"name", "match", "upstream", "durable", "concurrency", "rate_limit"}


def _route(at: _At, defaults: RouteSettings, taken: Collection[str]) -> RouteConfig:
    f = _fields(at, _ROUTE_KEYS, ["name", "match", "upstream"])
    name = _string(f["name"])
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise f["name"].error("may use only letters, digits, '-', '_' and '.'")
    if name in taken:
        raise f["name"].error(f"duplicate route name '{name}'")
    return RouteConfig(
        name=name,
        match=_match(f["match"]),
        upstream=_url(f["upstream"], _string(f["upstream"])),
        durable=_bool(f["durable"]) if "durable" in f else True,
        settings=_settings(f, defaults),
        concurrency=_concurrency(f["concurrency"]) if "concurrency" in f else None,
        rate_limit=_rate_limit(f["rate_limit"]) if "rate_limit" in f else None,
    )


def _check_breakers(items: list[_At], routes: list[RouteConfig]) -> None:
    """Durable routes to one upstream origin share its circuit breaker, so those that
    use one must agree on its settings."""
    first: dict[str, tuple[int, CircuitBreakerConfig]] = {}
    for i, (at, route) in enumerate(zip(items, routes, strict=True)):
        breaker = route.settings.circuit_breaker
        if breaker is None or not route.durable:
            continue
        j, settings = first.setdefault(route.origin, (i, breaker))
        if settings != breaker:
            f = _fields(at, _ROUTE_KEYS)
            raise f.get("circuit_breaker", f["upstream"]).error(
                f"differs from the circuit_breaker of routes[{j}], which has the same upstream"
                " host and port: routes to one upstream share its breaker"
            )


def _gateway(root: _At) -> GatewayConfig:
    if root.node.tag != _NULL_TAG and not isinstance(root.node, yaml.MappingNode):
        raise root.error("the top level must be a mapping (server:, storage:, routes: …)")
    f = _fields(root, ["server", "storage", "security", "cluster", "tracing", "defaults", "routes"])
    server = _server(f["server"]) if "server" in f else ServerConfig()
    storage = _storage(f.get("storage"), root.source)
    security = _security(f["security"]) if "security" in f else SecurityConfig()
    if not security.admin_token and not _is_loopback(server.admin[0]):
        # Its API reads every run's stored request and can cancel runs: never open
        # beyond this host. `server.admin` is in the file: only loopback is the default.
        raise _fields(f["server"], _SERVER_KEYS)["admin"].error(
            f"listens on {server.admin[0]}, beyond loopback, without security.admin_token:"
            " set a token, or bind the admin listener to 127.0.0.1"
        )
    cluster = _cluster(f["cluster"]) if "cluster" in f else ClusterConfig()
    tracing = _tracing(f["tracing"]) if "tracing" in f else TracingConfig()
    defaults = RouteSettings()
    if "defaults" in f:
        defaults = _settings(_fields(f["defaults"], _SETTING_KEYS), defaults)
    if "routes" not in f:
        raise ConfigError("routes", "at least one route is required", source=root.source)
    routes: list[RouteConfig] = []
    items = _items(f["routes"])
    for item in items:
        routes.append(_route(item, defaults, {r.name for r in routes}))
    if not routes:
        raise f["routes"].error("at least one route is required")
    _check_breakers(items, routes)
    return GatewayConfig(
        server, storage, security, cluster, tracing, defaults, tuple(routes), root.source
    )


# ── entry points ────────────────────────────────────────────────────────────────


def load_config_text(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Parse and validate a config; `env` (default: os.environ) feeds `${VAR}` expansion."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            "", f"invalid YAML: {e.problem or e.context}", line=line, source=source
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError("", f"invalid YAML: {e}", source=source) from e
    root = node if node is not None else yaml.ScalarNode(_NULL_TAG, "")
    return _gateway(_At(root, "", source, os.environ if env is None else env))


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and load a config file; unreadable or non-UTF-8 files are ConfigErrors too."""
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ConfigError("", f"cannot read the file: {e.strerror or e}", source=source) from e
    except UnicodeDecodeError as e:
        raise ConfigError("", "the file is not UTF-8 text", source=source) from e
    return load_config_text(text, source, env)
