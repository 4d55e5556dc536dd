"""A real OTLP/HTTP trace collector for tests: what a gateway exports, decoded into spans.

Accepts `POST /v1/traces` (protobuf, identity/gzip/deflate) on a loopback port, as a
collector does; never answers anything but what a collector would (200, 400, 415, or the
errors a test asks for).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from tests.helpers import assert_eventually

PROTOBUF = "application/x-protobuf"
MAX_BODY = 16 * 1024 * 1024
"""Largest request body accepted, as sent (compressed or not), and largest decoded one."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time: float
    """Unix seconds."""
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Span:
    """One exported span, in plain Python values."""

    trace_id: str
    """32 lower-case hex digits."""
    span_id: str
    """16 lower-case hex digits."""
    parent_span_id: str | None
    """None for a trace's root (or a span whose parent another process exported)."""
    name: str
    kind: str
    """The proto enum's name: SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL, …"""
    start: float
    """Unix seconds."""
    end: float
    attributes: dict[str, Any]
    events: tuple[SpanEvent, ...]
    status: str
    """STATUS_CODE_UNSET, STATUS_CODE_OK or STATUS_CODE_ERROR."""
    status_message: str
    resource: dict[str, Any]
    """The exporting process's attributes: service.name, …"""
    scope: str
    """The instrumentation scope (the tracer's name)."""

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Export:
    """One request the receiver answered, whatever its outcome."""

    status: int
    content_type: str
    content_encoding: str
    headers: dict[str, str]
    """As received, names lower-cased."""
    spans: int
    """Spans it carried: 0 unless it was decoded (answered 200)."""


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    retry_after: float | None


@dataclass
class OtlpReceiver:
    """Spans received, in arrival order, and each request answered.

    Serves on the test's event loop: an export that arrives while the test blocks it (a
    synchronous gateway start) waits, within the exporter's timeout (10 s by default).
    """

    url: str = ""
    """Base URL (`http://127.0.0.1:PORT`): what `tracing.otlp_endpoint` names."""
    spans: list[Span] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list)

    @property
    def traces_url(self) -> str:
        return self.url + "/v1/traces"

    def fail_next(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next `count` exports with `status` (their spans dropped), as a
        collector that is down; `retry_after` adds that header (0: the SDK retries at once)."""
        self._failures.extend(_Failure(status, retry_after) for _ in range(count))

    def by_trace(self, trace_id: str) -> list[Span]:
        """The trace's spans received so far, in order of start."""
        return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start)

    def children(self, span: Span) -> list[Span]:
        """Spans received whose parent is `span`, in order of start."""
        return [s for s in self.by_trace(span.trace_id) if s.parent_span_id == span.span_id]

    def outline(self, trace_id: str) -> list[str]:
        """The trace as indented names, parents before children, siblings by start time:
        ["POST /x", "  attempt 1", "    step a"]; a span whose parent never arrived is
        listed at the top, so a broken tree shows."""
        spans = self.by_trace(trace_id)
        ids = {s.span_id for s in spans}
        lines: list[str] = []

        def walk(level: Iterable[Span], depth: int) -> None:
            for s in level:
                lines.append("  " * depth + s.name)
                walk((c for c in spans if c.parent_span_id == s.span_id), depth + 1)

        walk((s for s in spans if s.parent_span_id not in ids), 0)
        return lines

    async def wait_for(
        self, predicate: Callable[[Span], bool], count: int = 1, within: float = 15.0
    ) -> list[Span]:
        """Wait until at least `count` received spans satisfy `predicate`; those spans.

        A batch exporter sends spans as they end, so once a trace's root (which ends last)
        has arrived, its other spans have too, unless an export of them failed."""

        async def arrived() -> list[Span]:
            found = [s for s in self.spans if predicate(s)]
            assert len(found) >= count, f"{len(found)} of {count} spans; received {self.names()}"
            return found

        result: list[Span] = await assert_eventually(arrived, within=within)
        return result

    async def run_trace(self, run_id: str, within: float = 15.0) -> list[Span]:
        """A run's trace, in order of start, once its run span (the server span with its
        `durable.run_id`, which ends last) has arrived."""
        found = await self.wait_for(
            lambda s: s.kind == "SPAN_KIND_SERVER" and s.attributes.get("durable.run_id") == run_id,
            within=within,
        )
        return self.by_trace(found[0].trace_id)

    def names(self) -> list[str]:
        return [s.name for s in self.spans]

    async def handle(self, request: web.Request) -> web.Response:
        """`POST /v1/traces`: decode, keep the spans, answer as a collector would."""
        status, spans = await self._read(request)
        headers: dict[str, str] = {}
        if status == 200 and self._failures:
            failure = self._failures.pop(0)
            status, spans = failure.status, []
            if failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
        self.exports.append(
            Export(
                status=status,
                content_type=request.content_type,
                content_encoding=request.headers.get("Content-Encoding", "identity"),
                headers={k.lower(): v for k, v in request.headers.items()},
                spans=len(spans),
            )
        )
        if status != 200:
            return web.Response(status=status, headers=headers)
        self.spans.extend(spans)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type=PROTOBUF)

    @staticmethod
    async def _read(request: web.Request) -> tuple[int, list[Span]]:
        """The request's spans and 200, or 415 (not protobuf) or 400 (undecodable)."""
        if request.content_type != PROTOBUF:
            return 415, []
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity" and encoding not in _WBITS:
            return 415, []
        body = await request.read()  # bounded by the app's client_max_size
        try:
            if encoding in _WBITS:
                body = _inflate(body, _WBITS[encoding])
            message = ExportTraceServiceRequest.FromString(body)
        except (zlib.error, DecodeError, ValueError):
            return 400, []
        return 200, decode(message)


def _inflate(body: bytes, wbits: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, MAX_BODY)
    if inflater.unconsumed_tail:
        raise ValueError(f"decoded body over {MAX_BODY} bytes")
    if not inflater.eof:
        raise ValueError("truncated compressed body")
    return out


def decode(message: ExportTraceServiceRequest) -> list[Span]:
    """Every span of an export request, each with its resource's attributes."""
    spans = []
    for resource_spans in message.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            spans += [_span(s, resource, scope) for s in scope_spans.spans]
    return spans


def _span(span: ProtoSpan, resource: dict[str, Any], scope: str) -> Span:
    return Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=span.name,
        kind=ProtoSpan.SpanKind.Name(span.kind),
        start=span.start_time_unix_nano / 1e9,
        end=span.end_time_unix_nano / 1e9,
        attributes=attributes(span.attributes),
        events=tuple(
            SpanEvent(e.name, e.time_unix_nano / 1e9, attributes(e.attributes)) for e in span.events
        ),
        status=Status.StatusCode.Name(span.status.code),
        status_message=span.status.message,
        resource=resource,
        scope=scope,
    )


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[OtlpReceiver]:
    """A receiver listening on a free loopback port until the block ends."""
    receiver = OtlpReceiver()
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/traces", receiver.handle)
    # Compressed bodies are inflated here, bounded, rather than by aiohttp.
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)  # the kernel picks a free port
        await site.start()
        host, port = runner.addresses[0][:2]
        receiver.url = f"http://{host}:{port}"
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    """A receiver for one test (tests/conftest.py makes it every test's to ask for):
    point `tracing.otlp_endpoint` at `otlp.url`."""
    async with serve() as receiver:
        yield receiver
