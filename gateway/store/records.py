"""The store's records: requests and responses, the writes the writer batches, the rows
reads give back, and the run status vocabulary every layer shares.

Plain data: no I/O, no SQL; both dialects build their statements from these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

Headers = list[tuple[str, str]]


class RunStatus(StrEnum):
    """A run's status: the one vocabulary of the engine, the store and the APIs."""

    RUNNING = "running"
    BACKOFF = "backoff"
    SUSPENDED = "suspended"
    """Waiting for a durable sleep or an event; lives in the store, not in memory."""
    PAUSED = "paused"
    """Attempts exhausted on a route with `on_exhausted: pause`: waits for an operator."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
"""A run in any other status is unfinished: retention keeps it."""

PARKED_STATUSES = frozenset({RunStatus.SUSPENDED, RunStatus.PAUSED})
"""Unfinished runs that no claim takes: the scheduler takes suspended ones when due, an
operator resumes paused ones. Every other unfinished run is active: recovery claims it."""

# Requests, responses and writes: every durable request builds several, so they are
# slotted but not `frozen`, whose `__init__` sets each field through
# `object.__setattr__` and costs five times as much (0.67 against 0.12 µs for nine
# fields). They are treated as immutable all the same: nothing assigns to them.


@dataclass(slots=True)
class StoredRequest:
    """What a run re-sends on every attempt, including after a restart."""

    method: str
    path_qs: str
    headers: Headers
    body: bytes


BODY_TOO_LARGE: Final = -1
"""`StoredResponse.kept` of a streamed body that passed its route's max_response: not kept."""


@dataclass(slots=True)
class StoredResponse:
    """A run's final response, replayed verbatim by its result URL."""

    status: int
    headers: Headers
    body: bytes
    kept: int | None = None
    """None: the body is `body`. Otherwise the body streamed into the store as the run's
    body chunks (`read_body`) and `body` is b"": `kept` is its length in bytes, or
    BODY_TOO_LARGE when it passed the route's max_response and was not kept."""

    def __post_init__(self) -> None:
        if self.kept is not None and (self.body or self.kept < BODY_TOO_LARGE):
            raise ValueError(f"a streamed response has body b'' and kept >= -1, not {self.kept}")


# --- writes: small records the writer batches into one transaction ---------------


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """An `Idempotency-Key` as its route keeps it, with the fingerprint of the request
    (method, path, query, body hash) that first used it."""

    key: str
    fingerprint: str


@dataclass(slots=True)
class CreateRun:
    """A new run with its request; with `idempotency`, its key in the same transaction."""

    run_id: str
    route: str
    request: StoredRequest
    created_at: float
    status: str = RunStatus.RUNNING
    attempt: int = 1
    """The attempt starting now. Stored at once, so a run recovered after a crash starts
    at the next number and never reuses the token of an attempt that may still be live."""
    owner: str | None = None
    lease_until: float | None = None
    idempotency: IdempotencyKey | None = None
    """The request's Idempotency-Key. The first key on a route wins; a later insert of
    the same key is ignored, not an error."""


@dataclass(slots=True)
class PutStep:
    """A completed step; first write wins (INSERT that ignores an existing key)."""

    run_id: str
    step_id: str
    output: bytes
    """Canonical JSON bytes of the output."""
    attempt: int
    created_at: float
    started_at: float | None = None
    """When the backend says the step's work began (Unix seconds), if it said."""
    duration_ms: float | None = None
    """How long the backend says the step's work took, if it said."""


MAX_ERROR_MESSAGE = 2000
"""Characters of a step error's message kept; the rest is cut off."""
STEP_ERRORS_KEPT = 100
"""Step errors kept per run, the first ones; later ones are only counted, so a backend
looping on a failing step cannot grow the store without bound."""


@dataclass(slots=True)
class RecordStepError:
    """A failed try of a step, as the backend reported it; the step stays incomplete.

    The store keeps a run's first STEP_ERRORS_KEPT and counts the rest.
    """

    run_id: str
    step_id: str
    attempt: int
    message: str
    """At most MAX_ERROR_MESSAGE characters."""
    created_at: float


@dataclass(slots=True)
class RecordAttempt:
    run_id: str
    attempt: int
    started_at: float
    ended_at: float
    outcome: str
    """`response`, `connect_error`, `timeout` or `suspended`."""
    status: int | None = None
    detail: str | None = None


@dataclass(slots=True)
class UpdateRun:
    """A run's state between attempts: status, attempt number, when it wakes. A no-op on
    a finished run: a final result is never undone."""

    run_id: str
    status: str
    attempt: int
    wake_at: float | None
    updated_at: float


@dataclass(slots=True)
class FinishRun:
    """A run's final response; also releases its lease (owner and lease_until cleared)
    and deletes its pending sleeps and waits. Keeps its streamed body: with
    `response.kept` set, that body is the result. A no-op on a run finished already
    (by another node that took it over, or cancelled): the first final result stays."""

    run_id: str
    status: str
    """`succeeded` or `failed`."""
    response: StoredResponse
    finished_at: float


@dataclass(slots=True)
class ReplaceResult(FinishRun):
    """A finished run's result replaced by the node that finished it, because the store
    refused part of the first one (a chunk of its streamed body): unlike FinishRun it
    overwrites a final result."""


@dataclass(slots=True)
class PutPending:
    """A sleep or wait a run is parked on. First write wins: the first call of a step
    fixes its wake time, event and match for every later attempt."""

    run_id: str
    step_id: str
    kind: str
    """`sleep` or `wait`."""
    wake_at: float | None
    """When a sleep is over or a wait times out; None: a wait without timeout."""
    event: str | None
    match: bytes | None
    """Canonical JSON object of dotted path → value (waits only)."""
    created_at: float


@dataclass(slots=True)
class DropPending:
    """Delete one pending sleep or wait, or all of a run's when `step_id` is None."""

    run_id: str
    step_id: str | None = None


@dataclass(slots=True)
class SuspendRun:
    """The run's attempt ended on a sleep or wait: park it and release its lease, so
    any node's scheduler takes it when due. Never revives a finished run."""

    run_id: str
    attempt: int
    wake_at: float | None
    """None: only an event wakes it."""
    updated_at: float
    suspended_on: str | None = None
    """What it waits for, `sleep:STEP_ID` or `wait:STEP_ID`: a run resumed on any node
    can then say what it was suspended on (its trace's suspension span)."""


@dataclass(slots=True)
class CancelRun:
    """An operator cancelled the run: `response` becomes its result, its pending sleeps
    and waits and its streamed body go, its lease ends. A no-op on a finished run (its
    result, streamed body included, stands)."""

    run_id: str
    response: StoredResponse
    finished_at: float


@dataclass(slots=True)
class ResetRun:
    """Run a failed or cancelled run again: back to `running` at `attempt`, its stored
    response and streamed body cleared (it streams anew), its steps kept."""

    run_id: str
    attempt: int
    updated_at: float
    owner: str | None = None
    """The node that runs it now; None leaves it for any node's claim."""
    lease_until: float | None = None


# --- streamed response bodies: a head per run, then chunks at byte offsets ----------


@dataclass(slots=True)
class BeginBody:
    """A run's streamed response begins, or begins again after a retry diverged from what
    was streamed: its status and headers, a new epoch, and only the first `keep` bytes of
    the chunks stored so far kept (later ones deleted, a chunk straddling `keep` cut)."""

    run_id: str
    epoch: int
    attempt: int
    status: int
    headers: Headers
    keep: int = 0

    def __post_init__(self) -> None:
        if self.keep < 0:
            raise ValueError(f"BeginBody.keep must be >= 0, not {self.keep}")


@dataclass(slots=True)
class AppendBody:
    """Bytes of a run's streamed response at byte `offset` (one chunk row)."""

    run_id: str
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        # An empty chunk would take its offset's key and make the real one a no-op.
        if self.offset < 0 or not self.data:
            raise ValueError(f"AppendBody needs offset >= 0 and data, not {self.offset}")


Write = (
    CreateRun
    | PutStep
    | RecordStepError
    | RecordAttempt
    | UpdateRun
    | FinishRun
    | PutPending
    | DropPending
    | SuspendRun
    | CancelRun
    | ResetRun
    | BeginBody
    | AppendBody
)


# --- reads ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    route: str
    status: str
    attempt: int
    created_at: float
    updated_at: float
    finished_at: float | None
    wake_at: float | None
    request: StoredRequest
    response: StoredResponse | None
    owner: str | None = None
    """The process that holds the run's lease (kept after release, for the record)."""
    lease_until: float | None = None
    suspended_on: str | None = None
    """`SuspendRun.suspended_on` while the run is suspended, or claimed from a suspension
    and no attempt begun yet (an `UpdateRun` clears it)."""
    suspended_at: float | None = None
    """When that suspension began (its `SuspendRun.updated_at`)."""


@dataclass(frozen=True, slots=True)
class BodyRow:
    """The head of a run's streamed response, and how many bytes of it are stored."""

    epoch: int
    attempt: int
    status: int
    headers: Headers
    size: int
    """Bytes stored contiguously from 0: the end of the last chunk (0 when none)."""


@dataclass(frozen=True, slots=True)
class KeyRow:
    """The run an idempotency key on a route is bound to."""

    fingerprint: str
    run_id: str


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: int
    started_at: float
    ended_at: float
    outcome: str
    status: int | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class PendingRow:
    run_id: str
    step_id: str
    kind: str
    wake_at: float | None
    event: str | None
    match: bytes | None
    created_at: float


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: str
    name: str
    data: bytes
    """JSON bytes, as posted."""
    ts: float


@dataclass(frozen=True, slots=True)
class CompletedWait:
    """A wait an event completed: `output` (the event object, canonical JSON) is its step."""

    run_id: str
    step_id: str
    output: bytes


@dataclass(frozen=True, slots=True)
class AddedEvent:
    """What recording an event did: whether its id was new, and the waits it completed
    in the same transaction (none for a known id)."""

    new: bool
    completed: tuple[CompletedWait, ...] = ()


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run as the admin listing shows it: no request or response bodies."""

    run_id: str
    route: str
    status: str
    attempt: int
    created_at: float
    updated_at: float
    finished_at: float | None
    wake_at: float | None
    method: str
    path_qs: str
    response_status: int | None


@dataclass(frozen=True, slots=True)
class StepRow:
    """A completed step as the admin run view shows it: its size, not its output."""

    step_id: str
    attempt: int
    created_at: float
    output_bytes: int
    started_at: float | None = None
    duration_ms: float | None = None


@dataclass(frozen=True, slots=True)
class StepErrorRow:
    """A failed try of a step as the admin run view shows it."""

    step_id: str
    attempt: int
    message: str
    created_at: float
