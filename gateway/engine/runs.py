"""Run records and the rules for changing them (pure: no I/O, no clock).

A `Run` lives in memory while this process owns it; the store has its durable copy.
Step bookkeeping — first write wins, size and count limits — is decided here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from gateway.config import RouteConfig
from gateway.engine.traces import TraceContext, trace_of
from gateway.errors import CONTENT_TYPE, problem_body
from gateway.store.records import (
    FINAL_STATUSES,
    BodyRow,
    RunStatus,
    StoredRequest,
    StoredResponse,
)
from step_protocol import wire


class PendingKind(StrEnum):
    SLEEP = "sleep"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Pending:
    """A sleep or event wait a step is blocked on; its first call fixes it for all attempts."""

    step_id: str
    kind: PendingKind
    wake_at: float | None
    """Sleep: when it is over. Wait: its timeout (None waits forever)."""
    event: str | None = None
    match: bytes | None = None
    """Canonical JSON object of dotted path → expected value."""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Parked:
    """A suspension in progress: its trace span runs from `since` to the next attempt."""

    since: float
    on: str | None
    """`sleep:STEP_ID` or `wait:STEP_ID` (`SuspendRun.suspended_on`); None if unknown."""


class StepResult(StrEnum):
    CREATED = "created"
    SAME = "same"
    CONFLICT = "conflict"
    OUTPUT_TOO_LARGE = "output_too_large"
    STATE_TOO_LARGE = "state_too_large"
    TOO_MANY_STEPS = "too_many_steps"


@dataclass(slots=True)
class Run:
    run_id: str
    route: RouteConfig
    request: StoredRequest
    created_at: float
    attempt: int = 0
    status: RunStatus = RunStatus.RUNNING
    wake_at: float | None = None
    """When the next attempt is due, while in backoff."""
    steps: dict[str, bytes] = field(default_factory=dict)
    """Completed steps: id → canonical JSON bytes of the output."""
    state_bytes: int = field(init=False, default=0)
    """Total size of `steps`: kept up to date by `record_step` and `merge_steps`."""
    response: StoredResponse | None = None
    limit_key: str = ""
    """The route's concurrency key for this run (from a header, query or the client ip)."""
    pending: dict[str, Pending] = field(default_factory=dict)
    """Sleeps and waits started and not yet over, by step id."""
    suspends: int = 0
    """Attempts that ended in a suspension: they do not count against max_attempts."""
    suspension: Pending | None = None
    """Set when the sidecar told the current attempt to suspend (a 202 to sleep or wait)."""
    streamed: BodyRow | None = None
    """What the store has of a response an earlier attempt began streaming (a run
    rebuilt from the store): the next attempt is compared with it."""
    parked: Parked | None = None
    """Since when, and on what, the run is suspended (until its next attempt)."""
    sample_ratio: InitVar[float] = 1.0
    trace: TraceContext = field(init=False)
    """Its trace: from the client's stored `traceparent`, else derived from the run id."""

    def __post_init__(self, sample_ratio: float) -> None:
        self.state_bytes = sum(map(len, self.steps.values()))
        self.trace = trace_of(self.run_id, self.request.headers, sample_ratio)

    def merge_steps(self, steps: dict[str, bytes]) -> None:
        """Add steps completed elsewhere (the store, an event); ones held already stay."""
        for step_id, output in steps.items():
            if step_id not in self.steps:
                self.steps[step_id] = output
                self.state_bytes += len(output)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def next_wake(self) -> float | None:
        """When a suspended run is due: its earliest timer (None: only an event wakes it)."""
        times = [p.wake_at for p in self.pending.values() if p.wake_at is not None]
        return min(times) if times else None

    def record_step(self, step_id: str, output: bytes) -> StepResult:
        """Apply a step write: first write wins; limits refuse without storing anything."""
        settings = self.route.settings
        existing = self.steps.get(step_id)
        if existing is not None:
            return StepResult.SAME if existing == output else StepResult.CONFLICT
        if len(output) > settings.max_step_output:
            return StepResult.OUTPUT_TOO_LARGE
        if len(self.steps) >= settings.max_steps:
            return StepResult.TOO_MANY_STEPS
        if self.state_bytes + len(output) > settings.max_run_state:
            return StepResult.STATE_TOO_LARGE
        self.steps[step_id] = output
        self.state_bytes += len(output)
        return StepResult.CREATED

    def steps_json(self) -> bytes:
        """The completed steps as one JSON object `{id: output}`, built without re-parsing."""
        return _json_object((k, v) for k, v in self.steps.items())


def steps_envelope(steps: Mapping[str, bytes]) -> bytes:
    """The sidecar's `{"steps": {id: {"output": …}}}` body, built without re-parsing."""
    inner = _json_object((k, b'{"output":' + v + b"}") for k, v in steps.items())
    return b'{"steps":' + inner + b"}"


def _json_object(items: Iterable[tuple[str, bytes]]) -> bytes:
    parts = [orjson.dumps(k) + b":" + v for k, v in items]
    return b"{" + b",".join(parts) + b"}"


def stored_problem(
    run_id: str, status: int, type_: str, title: str, detail: str, **extra: Any
) -> StoredResponse:
    """A gateway-made final response of a run, kept and replayed like an upstream one."""
    body = problem_body(status, type_, title, detail, run_id, **extra)
    return StoredResponse(status, [("Content-Type", CONTENT_TYPE), (wire.RUN_ID, run_id)], body)
