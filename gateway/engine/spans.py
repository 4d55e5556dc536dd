"""The spans of a run's trace: reported by the engine as each thing ends, built elsewhere.

A span is reported once, when it ends, with its start time: the run's when it finishes,
an attempt's when its outcome and the retry decision are known, a backoff's and a
suspension's when the next attempt begins, a step's when its `PUT` arrives (timed by
the backend). Nothing is held open, so a run resumed after a restart, or on another
node, just goes on reporting spans of the same trace (`traces.py` names them all).

The event loop only records what happened, as a flat tuple of plain values (an event);
`build` turns an event into its `Span` in the exporter's own process (`otlp.py`, fed by
`span_pipe.py`). Building and encoding a run's spans took about 20 µs of CPU per 0-step
request, 7% of what the request costs the gateway; recording the events takes a tenth
of that. Off (no sink), every report returns at once.

Attribute names follow OpenTelemetry's HTTP semantic conventions; the run's own are
`durable.*`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from gateway.engine.retries import AttemptOutcome, Decision, OutcomeKind, Verdict
from gateway.engine.runs import Run
from gateway.engine.traces import StepTiming

Kind = Literal["server", "client", "internal"]
Value = str | int | float | bool
Event = tuple[Any, ...]
"""What one report says: its kind first, then plain values (JSON survives them)."""


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


class Sink(Protocol):
    def put(self, event: Event) -> None:
        """Take an event for export; never blocks, drops when its bounded queue is full."""

    async def close(self, grace: float = 5.0) -> None:
        """Export what is queued, for up to `grace` seconds, and stop."""


class Spans:
    """Reports what happens to sampled runs to the sink (None: tracing is off)."""

    __slots__ = ("sink", "sample_ratio")

    def __init__(self, sink: Sink | None = None, sample_ratio: float = 1.0) -> None:
        self.sink = sink
        self.sample_ratio = sample_ratio
        """Share of new traces recorded (a client's sampled flag decides for its own)."""

    def _to(self, run: Run) -> Sink | None:
        return self.sink if run.trace.sampled else None

    def run(self, run: Run, status: int, end: float) -> None:
        """The run ended with `status` (its result, or the problem it was given)."""
        if (sink := self._to(run)) is None:
            return
        trace, route, request = run.trace, run.route, run.request
        sink.put(
            (
                "run",
                trace.trace_id,
                trace.run_span,
                trace.client_span,
                run.run_id,
                route.name,
                route.match.path,
                request.method,
                request.path_qs,
                status,
                run.attempt,
                run.created_at,
                end,
            )
        )

    def attempt(
        self,
        run: Run,
        attempt: int,
        start: float,
        end: float,
        outcome: AttemptOutcome | None,
        decision: Decision | None = None,
    ) -> None:
        """An attempt ended: `outcome` None when it was cut off (the gateway stopped or
        lost the run); `decision` the retry decision taken on it."""
        if (sink := self._to(run)) is None:
            return
        status = detail = None
        if outcome is None:
            how = "interrupted"
        elif run.suspension is not None:
            how = "suspended"
        else:
            how, status, detail = outcome.kind.value, outcome.status, outcome.detail
        retried = reason = delay = None
        if decision is not None:
            retried, reason = decision.verdict is Verdict.RETRY, decision.reason
            delay = decision.delay
        trace, route, request = run.trace, run.route, run.request
        sink.put(
            (
                "attempt",
                trace.trace_id,
                trace.attempt_span(attempt),
                trace.run_span,
                run.run_id,
                route.name,
                request.method,
                route.upstream,
                request.path_qs,
                attempt,
                start,
                end,
                how,
                status,
                detail,
                retried,
                reason,
                delay,
            )
        )

    def waited(self, run: Run, name: str, start: float, end: float, **more: Value) -> None:
        """The run waited between attempts: a backoff, a suspension (`more`: its
        attributes, beyond the run's, without their `durable.` prefix)."""
        if (sink := self._to(run)) is None:
            return
        trace = run.trace
        sink.put(
            ("waited", trace.trace_id, trace.run_span, run.run_id, run.route.name)
            + (name, start, end, more)
        )

    def suspension(self, run: Run, end: float) -> None:
        """The run's suspension (`run.parked`) is over: its next attempt begins."""
        parked = run.parked
        if parked is None:
            return
        run.parked = None
        kind, _, step_id = (parked.on or "suspended:").partition(":")
        more: dict[str, Value] = {"suspension": kind}
        if step_id:
            more["step_id"] = step_id
        self.waited(run, f"{kind} {step_id}".strip(), parked.since, end, **more)

    def step(
        self,
        run: Run,
        step_id: str,
        received: float,
        timing: StepTiming,
        *,
        size: int | None = None,
        error: str | None = None,
    ) -> None:
        """A step completed (`size`: its output's bytes) or failed a try (`error`), as
        its backend reported in the current attempt."""
        if (sink := self._to(run)) is None:
            return
        trace = run.trace
        start, end = timing.span(received)
        sink.put(
            ("step", trace.trace_id, trace.attempt_span(run.attempt), run.run_id, run.route.name)
            + (run.attempt, step_id, start, end, size, error)
        )


# ── building spans from events (in the exporter's process) ──────────────────────


def build(event: Sequence[Any]) -> Span:
    """The span an event reports; a list (from JSON) as well as the tuple."""
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
    elif how not in ("suspended", OutcomeKind.RESPONSE.value):
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
