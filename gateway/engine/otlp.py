"""Spans out over OTLP/HTTP: encoded here as OTLP protobuf, posted in batches, by a
process of its own (`python -m gateway.engine.otlp`, started by `span_pipe.py`), so none
of it takes the gateway's event loop.

Why not the OpenTelemetry SDK and its exporter: building a `ReadableSpan` and encoding it
through them took about 70 µs of CPU per span here, a quarter of what a whole 0-step
request costs the gateway. Encoding the few fields of our spans directly, with the
attributes that recur (a route, a status) encoded once, takes a fraction of that (see
bench/README). The wire format is OTLP's `ExportTraceServiceRequest`, which the tests
decode with opentelemetry-proto's generated classes.

Spans are encoded as their events arrive and kept as bytes until posted, so the queue
is bounded in bytes: past `QUEUE_BYTES` new spans are dropped and counted.
One task posts a batch when it is full or a second old; a collector that fails or is
down gets the batch again after a backoff (doubling to 30 s), so nothing waits on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import signal
import struct
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import aiohttp
import orjson

from gateway import logs, metrics
from gateway.config import TracingConfig
from gateway.engine.spans import Span, Value, build
from gateway.logs import Burst
from gateway.tasks import spawn

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
_RETRIED: Final = frozenset({429, 502, 503, 504})
"""Statuses OTLP/HTTP says to retry; any other failure drops the batch."""

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


_PAIRS: dict[tuple[int, str, Value], bytes] = {}
"""Encoded attributes by (tag, key, value): most recur (an attempt number, a status)."""
PAIRS_KEPT: Final = 4096
"""Then the cache starts again (one-off values, such as step ids, must not keep it full)."""


def _recurring(tag: int, key: str, value: Value) -> bytes:
    """`_pair`, from `_PAIRS` when it was seen lately."""
    cached = (tag, key, value)
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


class OtlpExporter:
    """`spans.Exporter` to an OTLP/HTTP collector (`tracing.otlp_endpoint`)."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.traces_url is not None
        self.url = config.traces_url
        self._headers = {"Content-Type": "application/x-protobuf", **dict(config.headers)}
        self._head = _resource_head(config)
        self._spans: list[bytes] = []
        self._queued = 0
        """Bytes of encoded spans not yet posted, the batch being posted included."""
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = Burst(log, f"exporting spans to {self.url}")

    def export(self, span: Span) -> None:
        data = encode_span(span)
        if self._queued + len(data) > QUEUE_BYTES:
            metrics.child(metrics.SPANS_DROPPED, "queue_full").inc()
            return
        self._spans.append(data)
        self._queued += len(data)
        if self._queued >= BATCH_BYTES:
            self._full.set()
        if self._task is None:
            self._task = spawn(self._post_forever(), name="otlp-export")

    async def _post_forever(self) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TIMEOUT), headers=self._headers
        ) as session:
            backoff = 0.0
            batch: list[bytes] = []
            while True:
                if not batch:
                    try:
                        await asyncio.wait_for(self._full.wait(), DELAY)
                    except TimeoutError:
                        pass
                    batch = self._take()
                    if not batch:
                        continue
                retry_after = await self._post(session, batch)
                if retry_after is None:
                    self._queued -= sum(map(len, batch))
                    batch, backoff = [], 0.0
                    continue
                backoff = min(MAX_BACKOFF, max(1.0, backoff * 2, retry_after))
                await asyncio.sleep(backoff)

    def _take(self) -> list[bytes]:
        """The next batch: spans up to BATCH_BYTES (at least one)."""
        self._full.clear()
        size, count = 0, 0
        for data in self._spans:
            if count and size + len(data) > BATCH_BYTES:
                break
            size += len(data)
            count += 1
        batch, self._spans = self._spans[:count], self._spans[count:]
        if self._queued - size >= BATCH_BYTES:
            self._full.set()
        return batch

    async def _post(self, session: aiohttp.ClientSession, batch: list[bytes]) -> float | None:
        """Post one batch: None once it is done with (sent, or refused for good), else the
        seconds to wait before it is tried again."""
        try:
            async with session.post(self.url, data=request_body(self._head, batch)) as resp:
                await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failing.failed(f"{type(exc).__name__}: {exc}")
            return 0.0
        if status < 300:
            self._failing.ok()
            metrics.SPANS_EXPORTED.inc(len(batch))
            return None
        if status in _RETRIED:
            self._failing.failed(f"status {status}")
            return float(retry_after) if retry_after.isdigit() else 0.0
        self._failing.failed(f"status {status}: the batch of {len(batch)} spans is dropped")
        metrics.child(metrics.SPANS_DROPPED, "refused").inc(len(batch))
        return None

    async def close(self, grace: float = 5.0) -> None:
        """Post what is queued, for up to `grace` seconds; then stop."""
        task = self._task
        if task is None:
            return
        try:
            async with asyncio.timeout(grace):
                while self._queued and not task.done():
                    self._full.set()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("%d bytes of spans not exported at shutdown", self._queued)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ── the exporter's process ──────────────────────────────────────────────────────

MAX_LINE: Final = 64 * 1024 * 1024
"""Longest line of events the gateway writes (it writes far shorter ones)."""
REPORT_EVERY: Final = 1.0


def config_line(config: TracingConfig) -> bytes:
    """The first line the gateway writes: what to export to, and how to log."""
    level, fmt = logs.current()
    return orjson.dumps({"tracing": dataclasses.asdict(config), "log": [level, fmt]}) + b"\n"


def _config(data: dict[str, Any]) -> TracingConfig:
    fields: dict[str, Any] = dict(data)
    for name in ("resource_attributes", "headers"):  # JSON made its pairs lists
        fields[name] = tuple(tuple(pair) for pair in fields[name])
    return TracingConfig(**fields)


def _counts() -> dict[str, float]:
    return {
        "exported": metrics.SPANS_EXPORTED.labels().value,
        **{reason: metrics.child(metrics.SPANS_DROPPED, reason).value for reason in DROPPED},
    }


DROPPED: Final = ("queue_full", "refused")


async def _report() -> None:
    """Write the counts (cumulative) to stdout every second, for the gateway's metrics."""
    while True:
        sys.stdout.buffer.write(orjson.dumps(_counts()) + b"\n")
        sys.stdout.buffer.flush()
        await asyncio.sleep(REPORT_EVERY)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    first = orjson.loads(await reader.readline())
    level, fmt = first["log"]
    logs.setup(level, fmt)
    exporter = OtlpExporter(_config(first["tracing"]))
    reporting = spawn(_report(), name="otlp-report")
    while line := await reader.readline():  # until the gateway closes the pipe (or dies)
        for event in orjson.loads(line):
            exporter.export(build(event))
    await exporter.close()
    reporting.cancel()
    sys.stdout.buffer.write(orjson.dumps(_counts()) + b"\n")


def main() -> None:
    """Ignore the signals a terminal or service manager sends the gateway's whole group:
    this process stops when the gateway closes its end of the pipe, once it has posted
    what it holds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
