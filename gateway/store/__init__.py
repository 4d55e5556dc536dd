"""Storage seam: the records, the writes the group-commit writer batches, the Protocols.

Everything that touches the database goes through `FullStore` (`Store` for runs, steps,
leases, keys and retention; `SuspensionStore` for sleeps, waits and events; `RunQueries`
for the admin API); each dialect file holds its own SQL. The request path never awaits
a store call on the happy path: writes are queued on `writer.Writer` and committed in
batches by one task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Headers = list[tuple[str, str]]

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


@dataclass(slots=True)
class StoredResponse:
    """A run's final response, replayed verbatim by its result URL."""

    status: int
    headers: Headers
    body: bytes


# --- writes: small records the writer batches into one transaction ---------------


@dataclass(slots=True)
class CreateRun:
    """A new run with its request; with `idempotency`, its key in the same transaction."""

    run_id: str
    route: str
    request: StoredRequest
    created_at: float
    status: str = "running"
    attempt: int = 1
    """The attempt starting now. Stored at once, so a run recovered after a crash starts
    at the next number and never reuses the token of an attempt that may still be live."""
    owner: str | None = None
    lease_until: float | None = None
    idempotency: tuple[str, str] | None = None
    """(key, request fingerprint). The first key on a route wins; a later insert of the
    same key is ignored, not an error."""


@dataclass(slots=True)
class PutStep:
    """A completed step; first write wins (INSERT that ignores an existing key)."""

    run_id: str
    step_id: str
    output: bytes
    """Canonical JSON bytes of the output."""
    attempt: int
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
    """A run's state between attempts: status, attempt number, when it wakes."""

    run_id: str
    status: str
    attempt: int
    wake_at: float | None
    updated_at: float


@dataclass(slots=True)
class FinishRun:
    """A run's final response; also releases its lease (owner and lease_until cleared)
    and deletes its pending sleeps and waits."""

    run_id: str
    status: str
    """`succeeded` or `failed`."""
    response: StoredResponse
    finished_at: float


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


@dataclass(slots=True)
class CancelRun:
    """An operator cancelled the run: `response` becomes its result, its pending sleeps
    and waits go, its lease ends. A no-op on a finished run (its result stands)."""

    run_id: str
    response: StoredResponse
    finished_at: float


@dataclass(slots=True)
class ResetRun:
    """Run a failed or cancelled run again: back to `running` at `attempt`, its stored
    response cleared, its steps kept."""

    run_id: str
    attempt: int
    updated_at: float
    owner: str | None = None
    """The node that runs it now; None leaves it for any node's claim."""
    lease_until: float | None = None


Write = (
    CreateRun
    | PutStep
    | RecordAttempt
    | UpdateRun
    | FinishRun
    | PutPending
    | DropPending
    | SuspendRun
    | CancelRun
    | ResetRun
)

# The final statuses are `gateway.runs.FINAL_STATUSES` (a run in any other status is
# unfinished: retention keeps it). Not imported here: runs.py imports this module.

PARKED_STATUSES = frozenset({"suspended", "paused"})
"""Unfinished runs that no claim takes: the scheduler takes suspended ones when due, an
operator resumes paused ones. Every other unfinished run is active: recovery claims it."""


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


class Store(Protocol):
    """The domain operations the gateway needs from a database.

    Leases: a run belongs to the `owner` whose `lease_until` has not passed. An owner
    id names one process start (say host:pid:random), never a host alone: a restarted
    process is a new owner, so its claims never mistake a dead start's runs for its own.
    """

    @property
    def exclusive(self) -> bool:
        """True when no other gateway process can use this store (SQLite's file lock),
        so live-looking leases are a dead process's and may be taken: `steal=True`."""

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit all writes in one transaction, in order; all or nothing."""

    async def get_run(self, run_id: str) -> RunRow | None: ...

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        """Completed steps of a run: step id → canonical JSON bytes of the output."""

    async def list_attempts(self, run_id: str) -> list[AttemptRow]:
        """The run's attempts in order. A store may keep a first attempt that ended the
        run with success in the run alone; it reads back as running from the run's
        creation to its end."""

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store value under key unless one is there; return the value that is."""

    async def claim_unfinished(
        self, owner: str, now: float, lease_ttl: float, limit: int = 1000, *, steal: bool = False
    ) -> list[RunRow]:
        """Take up to `limit` active runs and lease them to owner until now + lease_ttl.

        Active: unfinished and not parked (PARKED_STATUSES; `claim_due` takes suspended
        runs when due). Takes runs with no lease or an expired one (`lease_until < now`),
        or with `steal` every active run; never one this owner already holds unexpired, so
        calling again until fewer than `limit` come back pages through all of them
        once (provided the loop ends within `lease_ttl`). Due runs come first
        (`wake_at` NULL first, then by wake_at, then by created_at). Atomic: two
        owners claiming at once never get the same run.
        """

    async def renew_leases(self, owner: str, until: float) -> int:
        """Extend every lease owner holds on an active run; returns how many."""

    async def release_leases(self, owner: str) -> int:
        """Graceful stop: end owner's leases at once (owner kept) so others take the runs."""

    async def find_idempotency(self, route: str, key: str) -> tuple[str, str] | None:
        """The (fingerprint, run id) an idempotency key on a route is bound to."""

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        """Delete up to `limit` runs that finished before cutoff, with their steps,
        attempts, pending rows and idempotency keys, and up to `limit` events older than
        cutoff, in one short transaction. Returns the larger of the two counts.

        Loop while it returns `limit`, yielding between calls, so requests never wait
        long behind a purge.
        """

    async def close(self) -> None: ...


class SuspensionStore(Protocol):
    """Durable sleep and wait-for-event: pending rows, due runs, events.

    A suspended run is in the store alone: its `wake_at` (indexed) says when a
    scheduler on any node takes it; nothing is held in memory per timer.
    """

    async def claim_due(
        self, owner: str, now: float, lease_ttl: float, limit: int = 500
    ) -> list[RunRow]:
        """Take up to `limit` suspended runs due by now (`wake_at <= now`), earliest first.

        Atomic: each comes back `running`, with no wake time and leased to owner until
        now + lease_ttl, so it leaves the due index at once, and if this node dies it is
        an ordinary active run that `claim_unfinished` recovers.
        """

    async def next_wake_at(self) -> float | None:
        """The earliest wake time of a suspended run; None when none has one."""

    async def count_pending(self) -> dict[str, int]:
        """Pending rows by kind, `{"sleep": n, "wait": m}`, for a gauge read at scrape time.

        Counts every pending row, so it includes the few of runs that were woken and
        have not yet recorded the step; cheap (an index-only count, no join).
        """

    async def count_timers(self) -> int:
        """Suspended runs with a wake time: the timers the schedulers hold, for a gauge.

        One per run (its earliest sleep or wait timeout); an index-only count.
        """

    async def count_suspends(self, run_id: str) -> int:
        """How many of a run's attempts ended suspended (outcome `suspended`), which its
        retry budget leaves out; counted in the database, no attempt row is read."""

    async def get_pending(self, run_id: str, step_id: str) -> PendingRow | None: ...

    async def list_pending(self, run_id: str) -> list[PendingRow]:
        """A run's pending sleeps and waits, oldest first."""

    async def waits_for(self, event: str, limit: int = 10_000) -> list[PendingRow]:
        """Pending waits on this event name of suspended runs, oldest first."""

    async def add_event(self, event_id: str, name: str, data: bytes, ts: float) -> bool:
        """Record an event; False (and nothing changes) when its id is known already."""

    async def complete_wait(self, run_id: str, step_id: str, output: bytes, now: float) -> bool:
        """Complete a pending wait with `output`, in one transaction: store the step
        (at the run's current attempt), delete the pending row, and make a suspended
        run due now. False, changing nothing, when the wait is gone or its step is done
        already, so two events never both complete one wait.
        """

    async def events_since(self, name: str, since: float, limit: int = 1000) -> list[EventRow]:
        """Events of this name with `ts >= since`, oldest first (a wait's look-back)."""


class RunQueries(Protocol):
    """Reads for the admin API and dashboard; never load bodies they do not show."""

    async def list_runs(
        self, route: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[RunSummary], str | None]:
        """One page of runs, newest first, and the cursor of the next page (None: last).

        The cursor is opaque; a malformed one raises ValueError. Pages are keyset
        pages: runs created meanwhile never shift them.
        """

    async def list_steps(self, run_id: str) -> list[StepRow]:
        """A run's completed steps in the order they were recorded, with their sizes."""


class FullStore(Store, SuspensionStore, RunQueries, Protocol):
    """Everything a database offers the gateway; what `open_store` returns."""


TEST_MAX_PAGES_ENV = "DURABLE_TEST_SQLITE_MAX_PAGES"
"""Test-only fault point: caps an SQLite store's size in pages so writes fail as on a
full disk (SQLITE_FULL). Never set it in production."""


async def open_store(url: str) -> FullStore:
    """Open (and migrate) the store a `storage.url` names."""
    if url.startswith("sqlite:"):
        from gateway.store.sqlite import SqliteStore

        max_pages = os.environ.get(TEST_MAX_PAGES_ENV, "").strip()
        if max_pages:
            return await SqliteStore.open(url, max_page_count=int(max_pages))
        return await SqliteStore.open(url)
    raise ValueError(f"unsupported storage url scheme: {url.split(':', 1)[0]!r}")
