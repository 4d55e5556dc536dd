"""The OTLP encoding the exporter writes, decoded with opentelemetry-proto's own classes,
and the spans it builds from the engine's events."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config import TracingConfig
from gateway.engine import otlp, span_build
from gateway.engine.span_build import Span
from tests.otlp import decode

TRACE = "0af7651916cd43dd8448eb211c80319c"


def exported(spans: list[Span], config: TracingConfig | None = None) -> ExportTraceServiceRequest:
    config = config or TracingConfig(otlp_endpoint="http://127.0.0.1:4318")
    body = otlp.request_body(otlp.resource_head(config), [otlp.encode_span(s) for s in spans])
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


@pytest.mark.parametrize(
    "value",
    ["", "ascii", "ü" * 100, "x" * 20_000, True, False, 0, 1, 127, 128, 2**63 - 1, -1, -(2**63)]
    + [0.5, -3.25, 1e300],
)
def test_every_attribute_value_decodes_as_written(value: Any) -> None:
    span = Span(TRACE, "b7ad6b7169203331", None, "n", "internal", 1.0, 2.0, {"k": value})
    [decoded] = decode(exported([span]))
    assert decoded.attributes == {"k": value}
    assert type(decoded.attributes["k"]) is type(value)


def test_a_span_decodes_with_its_ids_times_kind_events_status_and_resource() -> None:
    config = TracingConfig(
        otlp_endpoint="http://127.0.0.1:4318",
        service_name="orders",
        resource_attributes=(("deployment.environment", "prod"),),
    )
    span = Span(
        TRACE,
        "00f067aa0ba902b7",
        "b7ad6b7169203331",
        "attempt 2",
        "client",
        1764896523.125,
        1764896524.5,
        {"durable.attempt": 2},
        [("retry", 1764896524.5, {"durable.retry.reason": "status 503"})],
        "status 503",
        remote_parent=True,
    )
    message = exported([span], config)
    [decoded] = decode(message)
    assert (decoded.trace_id, decoded.span_id, decoded.parent_span_id) == (
        TRACE,
        "00f067aa0ba902b7",
        "b7ad6b7169203331",
    )
    assert (decoded.name, decoded.kind) == ("attempt 2", "SPAN_KIND_CLIENT")
    assert (decoded.start, decoded.end) == pytest.approx((1764896523.125, 1764896524.5), abs=1e-6)
    assert (decoded.status, decoded.status_message) == ("STATUS_CODE_ERROR", "status 503")
    [event] = decoded.events
    assert (event.name, event.attributes) == ("retry", {"durable.retry.reason": "status 503"})
    assert decoded.resource["service.name"] == "orders"
    assert decoded.resource["deployment.environment"] == "prod"
    assert decoded.scope == "durable-gateway"
    raw = message.resource_spans[0].scope_spans[0].spans[0]
    assert raw.flags == 0x301  # sampled; the parent's remoteness known, and remote


def test_a_root_span_has_no_parent_and_an_unset_status() -> None:
    span = Span(TRACE, "00f067aa0ba902b7", None, "GET /x", "server", 1.0, 2.0, {})
    message = exported([span])
    [decoded] = decode(message)
    assert decoded.parent_span_id is None and decoded.status == "STATUS_CODE_UNSET"
    assert message.resource_spans[0].scope_spans[0].spans[0].flags == 0x101


def test_events_build_the_spans_the_engine_reports() -> None:
    run = span_build.build(
        ["run", TRACE, "1111111111111111", None, "r1", "orders", "/orders/*", "POST"]
        + ["/orders/7?token=secret", 502, 3, 10.0, 12.0]
    )
    assert run.name == "POST /orders/*" and run.kind == "server" and run.parent_id is None
    assert run.attributes["url.path"] == "/orders/7"  # the query may hold secrets
    assert run.attributes["error.type"] == "502" and run.error
    attempt = span_build.build(
        ["attempt", TRACE, "2222222222222222", "1111111111111111", "r1", "orders", "POST"]
        + ["https://api.example:8443/v1", "/orders/7?token=secret", 2, 10.5, 11.0]
        + ["timeout", None, "no response within 30s", True, "timeout; retry 3 of 5", 1.5]
    )
    assert attempt.attributes["url.full"] == "https://api.example:8443/v1/orders/7"
    assert (attempt.attributes["server.address"], attempt.attributes["server.port"]) == (
        "api.example",
        8443,
    )
    assert attempt.attributes["error.type"] == "timeout"
    assert attempt.error == "no response within 30s"
    assert attempt.events == [
        (
            "retry",
            11.0,
            {"durable.retry.reason": "timeout; retry 3 of 5", "durable.retry.delay_s": 1.5},
        )
    ]
    step = span_build.build(
        ["step", TRACE, "2222222222222222", "r1", "orders", 2, "charge", 10.6, 10.9, None, "boom"]
    )
    assert step.parent_id == "2222222222222222" and step.error == "boom"
    assert step.events == [("exception", 10.9, {"exception.message": "boom"})]
    assert (
        step.span_id
        != span_build.build(["step", TRACE, "2", "r1", "o", 2, "c", 1, 2, 3, None]).span_id
    )
