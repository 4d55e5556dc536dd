"""A run's place in a W3C trace, derived from what the store keeps of the run.

The trace id is the client's (from the `traceparent` stored with its request) or, when
it sent none, derived from the run id; the run's span id and each attempt's are derived
from the run id too. So any node, before or after a restart, names the same spans for a
run without storing an id, and a resumed run continues its trace. Each attempt's backend
gets its own attempt's span id as parent, so the backend's spans nest under that attempt.

Pure: no I/O, no clock; `spans.py` reports the spans these ids name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.upstream.headers import parse_traceparent

_RATIO_BITS: Final = 1 << 64
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def _derived(run_id: str, part: str, size: int) -> str:
    """A stable id of `size` bytes, lower-case hex, never all zero (invalid in W3C).
    One-way, so a trace id handed on to third parties does not give the run id away."""
    hexed = hashlib.blake2b(f"{run_id}\x00{part}".encode(), digest_size=size).hexdigest()
    return hexed if hexed not in (_ZERO_TRACE, _ZERO_SPAN) else hexed[:-1] + "1"


# Not frozen: one is made for every run, and a frozen dataclass's `__init__` (a
# `object.__setattr__` per field) cost three times as much. Its ids never change once
# made; only `attempt_span` assigns, to its one-entry `_attempt` cache.
@dataclass(slots=True)
class TraceContext:
    """Where a run's spans go: its trace, the client's span above it, and whether its
    spans are recorded (the client's sampled flag, or `sample_ratio` of new traces)."""

    run_id: str
    trace_id: str
    """32 lower-case hex digits."""
    client_span: str | None
    """The span id the client's `traceparent` named: the run span's parent."""
    sampled: bool
    _attempt: tuple[int, str] = field(default=(0, ""), repr=False, compare=False)
    """The last attempt's span id, asked for by its `traceparent`, span and exemplar."""

    @property
    def run_span(self) -> str:
        """The run span's id (the attempts' parent): only made when a span needs it."""
        return _derived(self.run_id, "run", 8)

    def attempt_span(self, attempt: int) -> str:
        number, span = self._attempt
        if number != attempt:
            span = _derived(self.run_id, f"attempt {attempt}", 8)
            self._attempt = (attempt, span)
        return span

    def traceparent(self, attempt: int) -> str:
        """The `traceparent` an attempt's backend gets: the attempt's span is its parent."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id}-{self.attempt_span(attempt)}-{flags}"

    @property
    def log(self) -> dict[str, str]:
        """`extra=` of a log line about the run (`logs.py` prints both ids)."""
        return {"run_id": self.run_id, "trace_id": self.trace_id}


def client_traceparent(headers: Sequence[tuple[str, str]]) -> str | None:
    """The `traceparent` a client sent, as its run stores it: last of the stored headers,
    where `upstream_request_headers` puts it, so finding it costs no scan."""
    if headers and headers[-1][0] == "traceparent":
        return headers[-1][1]
    return None


def trace_of(
    run_id: str, headers: Sequence[tuple[str, str]], sample_ratio: float = 1.0
) -> TraceContext:
    """The run's trace from its stored request headers.

    A valid client `traceparent` gives the trace id, the parent span and the sampling
    decision (its flag: the client decided); otherwise the trace id is derived from the
    run id and sampled when its low 64 bits fall below `sample_ratio` (OpenTelemetry's
    TraceIdRatioBased rule, so every node decides alike).
    """
    sent = client_traceparent(headers)
    parsed = None if sent is None else parse_traceparent(sent.lower())
    if parsed is not None:
        trace_id, parent, flags = parsed
        return TraceContext(run_id, trace_id, parent, bool(int(flags, 16) & 1))
    trace_id = _derived(run_id, "trace", 16)
    sampled = sample_ratio >= 1.0 or int(trace_id[16:], 16) < sample_ratio * _RATIO_BITS
    return TraceContext(run_id, trace_id, None, sampled)


@dataclass(slots=True)  # not frozen: one per step write (see TraceContext)
class StepTiming:
    """When a step's work ran, as its backend reported it on `PUT …/steps/{id}`
    (`started_at`, `duration_ms`; either, both or neither)."""

    started_at: float | None = None
    """Unix seconds."""
    duration_ms: float | None = None

    def span(self, received: float) -> tuple[float, float]:
        """Start and end of the step's span, in Unix seconds, given when the gateway got
        its `PUT`: what the backend left out is taken from that moment."""
        took = None if self.duration_ms is None else self.duration_ms / 1000
        start = self.started_at
        if start is None:
            start = received if took is None else received - took
        end = received if took is None else start + took
        return start, max(start, end)


NO_TIMING: Final = StepTiming()
