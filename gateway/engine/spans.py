"""The spans of a run's trace, built from what the engine reports as each thing ends.

A span is reported once, when it ends, with its start time: the run's when it finishes,
an attempt's when its outcome and the retry decision are known, a backoff's and a
suspension's when the next attempt begins, a step's when its `PUT` arrives (timed by
the backend). Nothing is held open, so a run resumed after a restart, or on another
node, just goes on reporting spans of the same trace (`traces.py` names them all).

Off (no exporter), every report returns at once: tracing costs a call per event.
Attribute names follow OpenTelemetry's HTTP semantic conventions; the run's own are
`durable.*`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

from gateway.engine.retries import AttemptOutcome, Decision, OutcomeKind, Verdict
from gateway.engine.runs import Run
from gateway.engine.traces import StepTiming

Kind = Literal["server", "client", "internal"]
Value = str | int | float | bool


@dataclass(slots=True)
class Span:
    """One finished span, as plain data (`otel.py` turns it into OpenTelemetry's)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: Kind
    start: float
    """Unix seconds, like `end`."""
    end: float
    attributes: dict[str, Value]
    events: list[tuple[str, float, dict[str, Value]]] = field(default_factory=list)
    error: str | None = None
    """Set when the span failed: its status is then ERROR with this description."""
    remote_parent: bool = False
    """The parent is the client's span, not one of the gateway's."""


class Exporter(Protocol):
    def export(self, span: Span) -> None:
        """Queue a span for export; never blocks, drops when its bounded queue is full."""

    async def close(self, grace: float = 5.0) -> None:
        """Export what is queued, for up to `grace` seconds, and stop."""


class Spans:
    """Builds the spans of sampled runs and hands them to the exporter (None: off)."""

    __slots__ = ("exporter", "sample_ratio")

    def __init__(self, exporter: Exporter | None = None, sample_ratio: float = 1.0) -> None:
        self.exporter = exporter
        self.sample_ratio = sample_ratio
        """Share of new traces recorded (a client's sampled flag decides for its own)."""

    def _to(self, run: Run) -> Exporter | None:
        return self.exporter if run.trace.sampled else None

    def run(self, run: Run, status: int, end: float, created_at: float | None = None) -> None:
        """The run ended with `status` (its result, or the problem it was given)."""
        if (exporter := self._to(run)) is None:
            return
        trace = run.trace
        route = run.route
        request = run.request
        attributes: dict[str, Value] = {
            "durable.run_id": run.run_id,
            "durable.route": route.name,
            "http.request.method": request.method,
            "url.path": request.path_qs.partition("?")[0],
            "http.route": route.match.path,
            "http.response.status_code": status,
            "durable.attempts": run.attempt,
        }
        error = None
        if status >= 500:
            attributes["error.type"] = str(status)
            error = f"the run ended with status {status}"
        exporter.export(
            Span(
                trace.trace_id,
                trace.run_span,
                trace.client_span,
                f"{request.method} {route.match.path}",
                "server",
                run.created_at if created_at is None else created_at,
                end,
                attributes,
                error=error,
                remote_parent=trace.client_span is not None,
            ),
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
        lost the run); `decision` the retry decision taken on it, as an event."""
        if (exporter := self._to(run)) is None:
            return
        request = run.request
        upstream = run.route.upstream
        host, port = _server(upstream)
        attributes: dict[str, Value] = {
            "durable.run_id": run.run_id,
            "durable.route": run.route.name,
            "durable.attempt": attempt,
            "http.request.method": request.method,
            "url.full": upstream + request.path_qs.partition("?")[0],  # a query may hold secrets
            "server.address": host,
            "server.port": port,
        }
        error = None
        if outcome is None:
            attributes["durable.outcome"] = "interrupted"
            error = "the attempt was cut off: the gateway stopped or lost the run"
        elif run.suspension is not None:
            attributes["durable.outcome"] = "suspended"
        else:
            attributes["durable.outcome"] = outcome.kind.value
            if outcome.status is not None:
                attributes["http.response.status_code"] = outcome.status
            if outcome.kind is not OutcomeKind.RESPONSE:
                attributes["error.type"] = outcome.kind.value
                error = outcome.detail or outcome.kind.value
            elif outcome.status is not None and outcome.status >= 400:
                attributes["error.type"] = str(outcome.status)
                error = f"status {outcome.status}"
        events = []
        if decision is not None:
            retried = decision.verdict is Verdict.RETRY
            event: dict[str, Value] = {"durable.retry.reason": decision.reason}
            if retried:
                event["durable.retry.delay_s"] = round(decision.delay, 6)
            events.append(("retry" if retried else "final", end, event))
        trace = run.trace
        exporter.export(
            Span(
                trace.trace_id,
                trace.attempt_span(attempt),
                trace.run_span,
                f"attempt {attempt}",
                "client",
                start,
                end,
                attributes,
                events,
                error,
            ),
        )

    def waited(self, run: Run, name: str, start: float, end: float, **more: Value) -> None:
        """The run waited between attempts: a backoff, a retry budget or breaker's hold,
        a suspension (`more`: its attributes, beyond the run's)."""
        if (exporter := self._to(run)) is None:
            return
        trace = run.trace
        attributes: dict[str, Value] = {
            "durable.run_id": run.run_id,
            "durable.route": run.route.name,
        }
        for key, value in more.items():
            attributes[f"durable.{key}"] = value
        exporter.export(
            Span(
                trace.trace_id,
                trace.span(name, run.attempt, start),
                trace.run_span,
                name,
                "internal",
                start,
                end,
                attributes,
            )
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
        if (exporter := self._to(run)) is None:
            return
        trace = run.trace
        start, end = timing.span(received)
        attributes: dict[str, Value] = {
            "durable.run_id": run.run_id,
            "durable.route": run.route.name,
            "durable.attempt": run.attempt,
            "durable.step_id": step_id,
        }
        if size is not None:
            attributes["durable.step.output_bytes"] = size
        events: list[tuple[str, float, dict[str, Value]]] = []
        if error is not None:  # the semantic conventions' event for a failure
            events.append(("exception", end, {"exception.message": error}))
        exporter.export(
            Span(
                trace.trace_id,
                trace.span("step", step_id, run.attempt, received),
                trace.attempt_span(run.attempt),
                f"step {step_id}",
                "internal",
                start,
                end,
                attributes,
                events,
                error,
            ),
        )


@functools.lru_cache(maxsize=256)
def _server(upstream: str) -> tuple[str, int]:
    """An upstream URL's host and port, as attempt spans name them."""
    parts = urlsplit(upstream)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
