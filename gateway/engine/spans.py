"""The spans of a run's trace: reported by the engine as each thing ends, built elsewhere.

A span is reported once, when it ends, with its start time: the run's when it finishes,
an attempt's when its outcome and the retry decision are known, a backoff's and a
suspension's when the next attempt begins, a step's when its `PUT` arrives (timed by
the backend). Nothing is held open, so a run resumed after a restart, or on another
node, just goes on reporting spans of the same trace (`traces.py` names them all).

The event loop only records what happened, as a flat tuple of plain values (an event);
`span_build.build` turns an event into its span in the exporter's own process
(`span_export.py`, fed by `span_pipe.py`). Building and encoding a run's spans took
about 20 µs of CPU per 0-step request, 7% of what the request costs the gateway;
recording the events takes a fifth of that. Off (no sink), every report returns at once.

Attribute names follow OpenTelemetry's HTTP semantic conventions; the run's own are
`durable.*`.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.engine.retries import AttemptOutcome, Decision, Verdict
from gateway.engine.runs import Run
from gateway.engine.traces import StepTiming

Event = tuple[Any, ...]
"""What one report says: its kind first, then plain values (JSON survives them)."""


class Sink(Protocol):
    def start(self) -> None:
        """Get ready to export (at the gateway's start)."""

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

    def waited(
        self, run: Run, name: str, start: float, end: float, **more: str | int | float
    ) -> None:
        """The run waited between attempts: a backoff, a suspension (`more`: its
        attributes, beyond the run's, without their `durable.` prefix)."""
        if (sink := self._to(run)) is None:
            return
        trace = run.trace
        run_id, route = run.run_id, run.route.name
        sink.put(("waited", trace.trace_id, trace.run_span, run_id, route, name, start, end, more))

    def suspension(self, run: Run, end: float) -> None:
        """The run's suspension (`run.parked`) is over: its next attempt begins."""
        parked = run.parked
        if parked is None:
            return
        run.parked = None
        kind, _, step_id = (parked.on or "suspended:").partition(":")
        more: dict[str, str | int | float] = {"suspension": kind}
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
        attempt = run.attempt
        sink.put(
            (
                "step",
                trace.trace_id,
                trace.attempt_span(attempt),
                run.run_id,
                run.route.name,
                attempt,
                step_id,
                start,
                end,
                size,
                error,
            )
        )
