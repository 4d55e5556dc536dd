"""The spans the engine's events report (`spans.Spans`), built in the exporter's process.

An event is a flat list of plain values, its kind first; `build` names the span, sets
its attributes (OpenTelemetry's HTTP semantic conventions, and the run's own
`durable.*`), its status and events. The run's and attempts' span ids come in the event
(derived, `traces.py`); other spans get random ones, as nothing refers to them.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.config.model import host_port

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
    span_id = _random_id()
    return Span(
        trace_id, span_id, attempt_span, name, "internal", start, end, attributes, events, error
    )


_server: Final = functools.lru_cache(maxsize=256)(host_port)
"""An upstream's host and port, as attempt spans name them."""

_BUILDERS: dict[str, Callable[..., Span]] = {
    "run": _run,
    "attempt": _attempt,
    "waited": _waited,
    "step": _step,
}
