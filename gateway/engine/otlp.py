"""Spans out over OTLP/HTTP, by a process of its own: `python -m gateway.engine.otlp`.

The gateway (`span_pipe.py`) writes what happened to its runs to this process's stdin,
as JSON lines of events (`spans.Spans`); here each becomes its span (`build`), is encoded
as OTLP protobuf, and is posted in batches. None of it takes the gateway's event loop.

Why not the OpenTelemetry SDK and its exporter: building a `ReadableSpan` and encoding it
through them took about 70 µs of CPU per span here, a quarter of what a whole 0-step
request costs the gateway. Encoding the few fields of our spans directly, with the
attributes that recur (a route, a status) encoded once, takes a fraction of that (see
bench/README). The wire format is OTLP's `ExportTraceServiceRequest`, which the tests
decode with opentelemetry-proto's generated classes.

Kept lean (the standard library, orjson, the config's shape): one thread reads and
encodes, the main one posts. Spans wait as bytes until posted, bounded in bytes: past
`QUEUE_BYTES` new ones are dropped and counted. A batch goes out when full or a second
old; a collector that fails or is down gets it again after a backoff (doubling to 30 s).
At the end of stdin (the gateway stopped, or died) what is queued is posted, for up to
`GRACE` seconds, and the process exits.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import logging
import random
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson

from gateway import logs
from gateway.config.model import TracingConfig
from gateway.logs import Burst

log = logging.getLogger("gateway.engine.otlp")

QUEUE_BYTES: Final = 16 * 1024 * 1024
"""Encoded spans waiting for export at most: a collector that is down costs no more."""
BATCH_BYTES: Final = 1024 * 1024
"""A batch is posted once this big (collectors take 4 MiB and more by default)."""
DELAY: Final = 1.0
"""Longest a span waits to be posted."""
TIMEOUT: Final = 10.0
"""Longest one post may take."""
MAX_BACKOFF: Final = 30.0
GRACE: Final = 5.0
"""Seconds given at the end of stdin to post what is queued."""
_RETRIED: Final = frozenset({429, 502, 503, 504})
"""Statuses OTLP/HTTP says to retry; any other failure drops the batch."""
DROPPED: Final = ("queue_full", "refused")
"""Why spans were not exported, as counted (`durable_trace_spans_dropped_total`)."""
MAX_LINE: Final = 64 * 1024 * 1024
"""Longest line of events the gateway writes (it writes far shorter ones)."""

Kind = Literal["server", "client", "internal"]
Value = str | int | float | bool


@dataclass(slots=True)
class Span:
    """One finished span, as plain data (`otlp.py` encodes it)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: Kind
    start: float
    """Unix seconds, like `end`."""
    end: float
    attributes: dict[str, Value]
    events: Sequence[tuple[str, float, dict[str, Value]]] = ()
    error: str | None = None
    """Set when the span failed: its status is then ERROR with this description."""
    remote_parent: bool = False
    """The parent is the client's span, not one of the gateway's."""


def build(event: Sequence[Any]) -> Span:
    """The span an event of `spans.Spans` reports; a list (from JSON) or the tuple."""
    return _BUILDERS[event[0]](*event[1:])


def _random_id() -> str:
    """A span id nothing else refers to (steps, waits): random, as W3C asks."""
    return f"{random.getrandbits(64) or 1:016x}"


def _run(
    trace_id: str,
    span_id: str,
    client_span: str | None,
    run_id: str,
    route: str,
    pattern: str,
    method: str,
    path_qs: str,
    status: int,
    attempts: int,
    start: float,
    end: float,
) -> Span:
    attributes: dict[str, Value] = {
        "durable.run_id": run_id,
        "durable.route": route,
        "http.request.method": method,
        "url.path": path_qs.partition("?")[0],
        "http.route": pattern,
        "http.response.status_code": status,
        "durable.attempts": attempts,
    }
    error = None
    if status >= 500:
        attributes["error.type"] = str(status)
        error = f"the run ended with status {status}"
    name = f"{method} {pattern}"
    span = Span(trace_id, span_id, client_span, name, "server", start, end, attributes)
    span.error, span.remote_parent = error, client_span is not None
    return span


def _attempt(
    trace_id: str,
    span_id: str,
    run_span: str,
    run_id: str,
    route: str,
    method: str,
    upstream: str,
    path_qs: str,
    attempt: int,
    start: float,
    end: float,
    how: str,
    status: int | None,
    detail: str | None,
    retried: bool | None,
    reason: str | None,
    delay: float | None,
) -> Span:
    host, port = _server(upstream)
    attributes: dict[str, Value] = {
        "durable.run_id": run_id,
        "durable.route": route,
        "durable.attempt": attempt,
        "durable.outcome": how,
        "http.request.method": method,
        "url.full": upstream + path_qs.partition("?")[0],  # a query may hold secrets
        "server.address": host,
        "server.port": port,
    }
    error = None
    if how == "interrupted":
        error = "the attempt was cut off: the gateway stopped or lost the run"
    elif how not in ("suspended", "response"):
        attributes["error.type"] = how
        error = detail or how
    if status is not None:
        attributes["http.response.status_code"] = status
        if status >= 400:
            attributes["error.type"] = str(status)
            error = f"status {status}"
    events: list[tuple[str, float, dict[str, Value]]] = []
    if retried is not None:
        event: dict[str, Value] = {"durable.retry.reason": reason or ""}
        if retried and delay is not None:
            event["durable.retry.delay_s"] = round(delay, 6)
        events.append(("retry" if retried else "final", end, event))
    name = f"attempt {attempt}"
    return Span(trace_id, span_id, run_span, name, "client", start, end, attributes, events, error)


def _waited(
    trace_id: str,
    run_span: str,
    run_id: str,
    route: str,
    name: str,
    start: float,
    end: float,
    more: dict[str, Value],
) -> Span:
    attributes: dict[str, Value] = {"durable.run_id": run_id, "durable.route": route}
    for key, value in more.items():
        attributes[f"durable.{key}"] = value
    return Span(trace_id, _random_id(), run_span, name, "internal", start, end, attributes)


def _step(
    trace_id: str,
    attempt_span: str,
    run_id: str,
    route: str,
    attempt: int,
    step_id: str,
    start: float,
    end: float,
    size: int | None,
    error: str | None,
) -> Span:
    attributes: dict[str, Value] = {
        "durable.run_id": run_id,
        "durable.route": route,
        "durable.attempt": attempt,
        "durable.step_id": step_id,
    }
    if size is not None:
        attributes["durable.step.output_bytes"] = size
    events: list[tuple[str, float, dict[str, Value]]] = []
    if error is not None:  # the semantic conventions' event for a failure
        events.append(("exception", end, {"exception.message": error}))
    name = f"step {step_id}"
    span = Span(trace_id, _random_id(), attempt_span, name, "internal", start, end, attributes)
    span.events, span.error = events, error
    return span


_BUILDERS: dict[str, Callable[..., Span]] = {
    "run": _run,
    "attempt": _attempt,
    "waited": _waited,
    "step": _step,
}


@functools.lru_cache(maxsize=256)
def _server(upstream: str) -> tuple[str, int]:
    """An upstream URL's host and port, as attempt spans name them."""
    parts = urlsplit(upstream)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


# ── protobuf wire format, the few shapes OTLP's trace messages need ──────────────

_DOUBLE: Final = struct.Struct("<d").pack
_FIXED64: Final = struct.Struct("<Q").pack
_FIXED32: Final = struct.Struct("<I").pack
_KINDS: Final = {"internal": 1, "server": 2, "client": 3}
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_SAMPLED: Final = 0x01


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTE: Final = tuple(bytes((n,)) for n in range(256))


def _field(tag: int, data: bytes) -> bytes:
    """A length-delimited field: `tag` is (field number << 3) | 2."""
    n = len(data)
    return _BYTE[tag] + (_BYTE[n] if n < 0x80 else _varint(n)) + data


def _value(value: Value) -> bytes:
    """An `AnyValue`."""
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    return b"\x21" + _DOUBLE(value)


def _pair(tag: int, key: str, value: Value) -> bytes:
    """One `KeyValue` field."""
    return _field(tag, _field(0x0A, key.encode()) + _field(0x12, _value(value)))


_PAIRS: dict[tuple[int, str, type, Value], bytes] = {}
"""Encoded attributes by (tag, key, type, value): most recur (an attempt number, a
status). The type tells True from 1 and 1.0, which are equal as keys."""
PAIRS_KEPT: Final = 4096
"""Then the cache starts again (one-off values, such as step ids, must not keep it full)."""


def _recurring(tag: int, key: str, value: Value) -> bytes:
    """`_pair`, from `_PAIRS` when it was seen lately."""
    cached = (tag, key, type(value), value)
    found = _PAIRS.get(cached)
    if found is None:
        if len(_PAIRS) >= PAIRS_KEPT:
            _PAIRS.clear()
        found = _PAIRS[cached] = _pair(tag, key, value)
    return found


def attributes(items: Iterable[tuple[str, Value]], tag: int = 0x4A) -> bytes:
    """Repeated `KeyValue` fields (a span's attributes are field 9)."""
    return b"".join([_pair(tag, key, value) for key, value in items])


def _span_attributes(items: Iterable[tuple[str, Value]], tag: int = 0x4A) -> bytes:
    return b"".join([_recurring(tag, key, value) for key, value in items])


def _nanos(seconds: float) -> bytes:
    return _FIXED64(int(seconds * 1e9))


_SPAN_KINDS: Final = {kind: bytes((0x30, number)) for kind, number in _KINDS.items()}


def encode_span(span: Span) -> bytes:
    """One `Span` message's fields."""
    flags = _SAMPLED | _HAS_IS_REMOTE
    parent = b""
    if span.parent_id is not None:
        parent = b"\x22\x08" + bytes.fromhex(span.parent_id)
        if span.remote_parent:
            flags |= _IS_REMOTE
    parts = [
        b"\x0a\x10" + bytes.fromhex(span.trace_id),
        b"\x12\x08" + bytes.fromhex(span.span_id),
        parent,
        _field(0x2A, span.name.encode()),
        _SPAN_KINDS[span.kind],
        b"\x39" + _nanos(span.start),
        b"\x41" + _nanos(span.end),
        _span_attributes(span.attributes.items()),
    ]
    for name, at, values in span.events:
        event = b"\x09" + _nanos(at) + _field(0x12, name.encode())
        parts.append(_field(0x5A, event + _span_attributes(values.items(), 0x1A)))
    if span.error is not None:  # Status: message, code ERROR
        parts.append(_field(0x7A, _field(0x12, span.error.encode()) + b"\x18\x02"))
    parts.append(b"\x85\x01" + _FIXED32(flags))  # field 16, fixed32
    return b"".join(parts)


def _resource_head(config: TracingConfig) -> bytes:
    """`ResourceSpans` up to its spans: the resource, then the scope's opening."""
    items: dict[str, Value] = dict(config.resource_attributes)
    items["service.name"] = config.service_name
    items.setdefault("service.version", _version())
    items["telemetry.sdk.name"] = "durable-gateway"
    items["telemetry.sdk.language"] = "python"
    return _field(0x0A, attributes(items.items(), 0x0A))


@functools.cache
def _scope() -> bytes:
    """The `InstrumentationScope` of every span: this gateway and its version."""
    return _field(0x0A, _field(0x0A, b"durable-gateway") + _field(0x12, _version().encode()))


def request_body(head: bytes, spans: Iterable[bytes]) -> bytes:
    """An `ExportTraceServiceRequest` of encoded spans, all of one resource and scope."""
    scope_spans = _scope() + b"".join([_field(0x12, span) for span in spans])
    return _field(0x0A, head + _field(0x12, scope_spans))


def _version() -> str:
    try:
        return version("durable-gateway")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0"


# ── the exporter ────────────────────────────────────────────────────────────────


# ── the exporter ────────────────────────────────────────────────────────────────


class Exporter:
    """Spans encoded as they come (`export`, from the reading thread) and posted in
    batches by `post_until_closed` (the main thread)."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.traces_url is not None
        self.url = config.traces_url
        parts = urlsplit(self.url)
        self._connect: Callable[[], http.client.HTTPConnection] = functools.partial(
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection,
            parts.hostname or "",
            parts.port,
            timeout=TIMEOUT,
        )
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **dict(config.headers)}
        self._head = _resource_head(config)
        self._spans: list[bytes] = []
        self._queued = 0
        """Bytes of encoded spans not yet posted, the batch being posted included."""
        self._changed = threading.Condition()
        self._closing_at: float | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._failing = Burst(log, f"exporting spans to {self.url}")
        self.counts = dict.fromkeys(("exported", *DROPPED), 0)

    def export(self, span: Span) -> None:
        data = encode_span(span)
        with self._changed:
            if self._queued + len(data) > QUEUE_BYTES:
                self.counts["queue_full"] += 1
                return
            self._spans.append(data)
            self._queued += len(data)
            if self._queued >= BATCH_BYTES:
                self._changed.notify()

    def close(self, grace: float = GRACE) -> None:
        """No more spans come: post what is queued for up to `grace` seconds, then stop."""
        with self._changed:
            self._closing_at = time.monotonic() + grace
            self._changed.notify()

    def post_until_closed(self, report: Callable[[dict[str, int]], None]) -> None:
        """Post batches until closed and empty (or out of grace); `report` gets the counts
        after each batch, and once a second."""
        batch: list[bytes] = []
        backoff = 0.0
        while True:
            if not batch:
                batch = self._next_batch()
                report(self.counts)
                if not batch:
                    if self._closing_at is not None:
                        return
                    continue
            if self._out_of_grace():
                self.counts["queue_full"] += len(batch) + len(self._spans)
                report(self.counts)
                log.warning("%d spans not exported at shutdown", len(batch) + len(self._spans))
                return
            retry_after = self._post(batch)
            if retry_after is None:
                with self._changed:
                    self._queued -= sum(map(len, batch))
                batch, backoff = [], 0.0
                continue
            backoff = min(MAX_BACKOFF, max(1.0, backoff * 2, retry_after))
            with self._changed:  # a wait that closing cuts short
                self._changed.wait_for(self._out_of_grace, backoff)

    def _out_of_grace(self) -> bool:
        return self._closing_at is not None and time.monotonic() >= self._closing_at

    def _next_batch(self) -> list[bytes]:
        """Spans up to BATCH_BYTES (at least one), once there are enough, a second has
        passed, or closing asks for the rest."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._queued >= BATCH_BYTES or self._closing_at is not None, DELAY
            )
            size, count = 0, 0
            for data in self._spans:
                if count and size + len(data) > BATCH_BYTES:
                    break
                size += len(data)
                count += 1
            batch, self._spans = self._spans[:count], self._spans[count:]
            return batch

    def _post(self, batch: list[bytes]) -> float | None:
        """Post one batch: None once it is done with (sent, or refused for good), else the
        seconds to wait before it is tried again."""
        body = request_body(self._head, batch)
        try:
            if self._conn is None:
                self._conn = self._connect()
            self._conn.request("POST", self._target, body, self._headers)
            resp = self._conn.getresponse()
            resp.read()
            status, retry_after = resp.status, resp.getheader("Retry-After") or ""
        except (OSError, http.client.HTTPException) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._failing.failed(f"{type(exc).__name__}: {exc}")
            return 0.0
        if status < 300:
            self._failing.ok()
            self.counts["exported"] += len(batch)
            return None
        if status in _RETRIED:
            self._failing.failed(f"status {status}")
            return float(retry_after) if retry_after.isdigit() else 0.0
        self._failing.failed(f"status {status}: the batch of {len(batch)} spans is dropped")
        self.counts["refused"] += len(batch)
        return None


# ── the process ─────────────────────────────────────────────────────────────────


def config_line(config: TracingConfig) -> bytes:
    """The first line the gateway writes: what to export to, and how to log."""
    level, fmt = logs.current()
    return orjson.dumps({"tracing": dataclasses.asdict(config), "log": [level, fmt]}) + b"\n"


def _config(data: dict[str, Any]) -> TracingConfig:
    fields: dict[str, Any] = dict(data)
    for name in ("resource_attributes", "headers"):  # JSON made its pairs lists
        fields[name] = tuple(tuple(pair) for pair in fields[name])
    return TracingConfig(**fields)


def _read(exporter: Exporter) -> None:
    """Events from stdin into the exporter, until the gateway closes the pipe."""
    stdin = sys.stdin.buffer
    try:
        while line := stdin.readline(MAX_LINE):
            for event in orjson.loads(line):
                exporter.export(build(event))
    finally:
        exporter.close()


def _report(counts: dict[str, int], last: list[bytes] = [b""]) -> None:  # noqa: B006
    """The counts on stdout, for the gateway's metrics, when they changed."""
    line = orjson.dumps(counts) + b"\n"
    if line != last[0]:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        last[0] = line


def main() -> None:
    """Ignore the signals a terminal or service manager sends the gateway's whole group:
    this process stops when the gateway closes its end of the pipe, once it has posted
    what it holds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    first = orjson.loads(sys.stdin.buffer.readline(MAX_LINE))
    logs.setup(*first["log"])
    exporter = Exporter(_config(first["tracing"]))
    threading.Thread(target=_read, args=(exporter,), name="otlp-read", daemon=True).start()
    exporter.post_until_closed(_report)


if __name__ == "__main__":
    main()
