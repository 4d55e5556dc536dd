"""tests/otlp.py, the integration tests' trace collector, fed by the real OpenTelemetry
SDK and exporter: what they send must come out as the spans that were made."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    set_span_in_context,
)

from tests.otlp import PROTOBUF, OtlpReceiver, SpanEvent

Build = Callable[[Tracer], Any]


def export(
    exporter: SpanExporter,
    build: Build,
    processor: Callable[[SpanExporter], SpanProcessor] = BatchSpanProcessor,
) -> Any:
    """Make spans with `build` through a real TracerProvider, flushed to `exporter` (on a
    worker thread: the SDK's export blocks, and the receiver runs on the test's loop)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": "test-svc", "deployment.environment": "ci"})
    )
    provider.add_span_processor(processor(exporter))
    try:
        return build(provider.get_tracer("tests.otlp"))
    finally:
        provider.shutdown()  # flushes what the processor holds


def three_levels(tracer: Tracer) -> list[SpanContext]:
    """A run-shaped tree: server span, client span under it, an internal one under that."""
    with tracer.start_as_current_span(
        "POST /orders", kind=SpanKind.SERVER, attributes={"durable.run_id": "r1"}
    ) as run:
        with tracer.start_as_current_span(
            "attempt 1",
            kind=SpanKind.CLIENT,
            attributes={
                "durable.attempt": 1,
                "http.response.status_code": 503,
                "retry.jitter": 0.25,
                "retried": True,
                "durable.steps": ["a", "b"],
            },
        ) as attempt:
            with tracer.start_as_current_span("step a") as step:
                pass
            attempt.add_event("retry decided", {"delay_s": 0.5, "reason": "status 503"})
            attempt.set_status(Status(StatusCode.ERROR, "upstream 503"))
    return [run.get_span_context(), attempt.get_span_context(), step.get_span_context()]


async def test_a_span_tree_arrives_whole_with_ids_kinds_attributes_and_events(
    otlp: OtlpReceiver,
) -> None:
    before = time.time()
    exporter = OTLPSpanExporter(endpoint=otlp.traces_url)
    contexts = await asyncio.to_thread(export, exporter, three_levels)
    after = time.time()
    run_ctx, attempt_ctx, step_ctx = contexts
    trace_id = format(run_ctx.trace_id, "032x")

    run, attempt, step = await otlp.run_trace("r1")
    assert otlp.outline(trace_id) == ["POST /orders", "  attempt 1", "    step a"]
    assert (run.trace_id, run.span_id, run.parent_span_id) == (
        trace_id,
        format(run_ctx.span_id, "016x"),
        None,
    )
    assert (attempt.span_id, attempt.parent_span_id) == (
        format(attempt_ctx.span_id, "016x"),
        run.span_id,
    )
    assert (step.span_id, step.parent_span_id) == (
        format(step_ctx.span_id, "016x"),
        attempt.span_id,
    )
    assert otlp.children(run) == [attempt] and otlp.children(step) == []
    assert [s.kind for s in (run, attempt, step)] == [
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_INTERNAL",
    ]
    assert run.attributes == {"durable.run_id": "r1"}
    assert attempt.attributes == {
        "durable.attempt": 1,
        "http.response.status_code": 503,
        "retry.jitter": 0.25,
        "retried": True,
        "durable.steps": ["a", "b"],
    }
    (event,) = attempt.events
    assert event == SpanEvent("retry decided", event.time, {"delay_s": 0.5, "reason": "status 503"})
    assert (attempt.status, attempt.status_message) == ("STATUS_CODE_ERROR", "upstream 503")
    assert (run.status, step.status) == ("STATUS_CODE_UNSET", "STATUS_CODE_UNSET")
    # Times are Unix seconds, nested as the spans were.
    assert before <= run.start <= attempt.start <= step.start <= step.end <= after
    assert step.end <= event.time <= attempt.end <= run.end <= after
    assert run.duration == run.end - run.start >= 0
    assert run.resource["service.name"] == "test-svc"
    assert run.resource["deployment.environment"] == "ci"
    assert run.scope == "tests.otlp"
    assert [e.status for e in otlp.exports] == [200]  # one batch, at shutdown


@pytest.mark.parametrize(
    ("compression", "encoding"),
    [(Compression.Gzip, "gzip"), (Compression.Deflate, "deflate"), (None, "identity")],
)
async def test_compressed_exports_are_decoded_and_their_headers_kept(
    otlp: OtlpReceiver, compression: Compression | None, encoding: str
) -> None:
    exporter = OTLPSpanExporter(
        endpoint=otlp.traces_url, compression=compression, headers={"X-Api-Key": "k1"}
    )
    await asyncio.to_thread(export, exporter, three_levels, SimpleSpanProcessor)
    # One request per span as each ends: the step first, the run last.
    assert otlp.names() == ["step a", "attempt 1", "POST /orders"]
    assert [(e.status, e.content_encoding, e.spans) for e in otlp.exports] == [
        (200, encoding, 1)
    ] * 3
    assert otlp.exports[0].content_type == PROTOBUF
    assert otlp.exports[0].headers["x-api-key"] == "k1"


async def test_failures_asked_for_are_answered_and_the_exporter_retries(
    otlp: OtlpReceiver,
) -> None:
    otlp.fail_next(2, 503, retry_after=0)
    exporter = OTLPSpanExporter(endpoint=otlp.traces_url)
    await asyncio.to_thread(export, exporter, three_levels)
    assert [(e.status, e.spans) for e in otlp.exports] == [(503, 0), (503, 0), (200, 3)]
    assert sorted(otlp.names()) == ["POST /orders", "attempt 1", "step a"]  # once each


async def test_a_failure_that_is_not_retried_loses_the_batch(otlp: OtlpReceiver) -> None:
    otlp.fail_next(1, 400)
    exporter = OTLPSpanExporter(endpoint=otlp.traces_url)
    await asyncio.to_thread(export, exporter, three_levels)
    assert [(e.status, e.spans) for e in otlp.exports] == [(400, 0)]
    assert otlp.spans == []
    with pytest.raises(AssertionError, match="0 of 1 spans"):
        await otlp.wait_for(lambda s: True, within=0.05)
    with pytest.raises(AssertionError, match="0 of 1 spans"):
        await otlp.run_trace("r1", within=0.05)


TRUNCATED_GZIP = gzip.compress(b"\xff", mtime=0)[:-4]
"""Without `mtime=0` the bytes, in the test's id, would differ between xdist workers."""


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "application/json"}, b"{}", 415),
        ({"Content-Type": PROTOBUF, "Content-Encoding": "br"}, b"", 415),
        ({"Content-Type": PROTOBUF}, b"\xff\xff\xff", 400),
        ({"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, b"not gzip", 400),
        ({"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, TRUNCATED_GZIP, 400),
        ({"Content-Type": PROTOBUF}, b"", 200),  # an empty request is a valid one
    ],
)
async def test_what_a_collector_refuses(
    otlp: OtlpReceiver, headers: dict[str, str], body: bytes, status: int
) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.post(otlp.traces_url, data=body, headers=headers) as resp:
            assert resp.status == status
            if status == 200:
                assert resp.content_type == PROTOBUF
                assert await resp.read() == b""  # an empty ExportTraceServiceResponse
    assert [(e.status, e.spans) for e in otlp.exports] == [(status, 0)]


async def test_a_failure_carries_its_retry_after(otlp: OtlpReceiver) -> None:
    otlp.fail_next(1, 429, retry_after=2.5)
    async with aiohttp.ClientSession() as http:
        for status, retry_after in ((429, "2.5"), (200, None)):
            headers = {"Content-Type": PROTOBUF}
            async with http.post(otlp.traces_url, data=b"", headers=headers) as resp:
                assert (resp.status, resp.headers.get("Retry-After")) == (status, retry_after)


async def test_a_span_under_a_remote_parent_heads_its_outline(otlp: OtlpReceiver) -> None:
    """As a run under a client's `traceparent`: its parent id is kept though that span
    was never received, and the outline starts at it."""
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )

    def under_remote(tracer: Tracer) -> None:
        context = set_span_in_context(NonRecordingSpan(remote))
        with tracer.start_as_current_span("POST /orders", context=context, kind=SpanKind.SERVER):
            with tracer.start_as_current_span("attempt 1", kind=SpanKind.CLIENT):
                pass

    exporter = OTLPSpanExporter(endpoint=otlp.traces_url)
    await asyncio.to_thread(export, exporter, under_remote)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert otlp.outline(trace_id) == ["POST /orders", "  attempt 1"]
    assert otlp.by_trace(trace_id)[0].parent_span_id == "b7ad6b7169203331"
