"""The store's seams: what the gateway needs from a database, as Protocols.

`Store` holds runs, steps, leases, keys and retention; `SuspensionStore` sleeps, waits
and events; `RunQueries` the admin API's reads. Each dialect implements `FullStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from gateway.store.records import (
    AddedEvent,
    AttemptRow,
    BodyRow,
    CreateRun,
    EventRow,
    KeyRow,
    PendingRow,
    RunRow,
    RunSummary,
    StepErrorRow,
    StepRow,
    Write,
)


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

    async def get_body(self, run_id: str) -> BodyRow | None:
        """The run's streamed response head and stored size; None when none began."""

    async def read_body(self, run_id: str, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes of the run's stored body from byte `offset` (fewer at the end
        of what is stored, b"" past it); whole chunks are read, the first cut at `offset`.

        Reads one bounded range of chunks, so streaming a body of any size is a loop of
        these with `limit` bytes in memory at a time. Each call reads a committed state
        of its own: compare `get_body`'s epoch to notice a BeginBody in between.
        """

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

    async def create_keyed(self, write: CreateRun) -> KeyRow | None:
        """Commit a run's creation with its idempotency key at once, unless the key is
        taken on its route: then nothing is written and the key's row comes back.

        For a store nodes share, where two duplicates may arrive on two nodes at once:
        the first key wins in the database, and the other request attaches to its run,
        which exists by the time anyone reads the key.
        """

    async def find_idempotency(self, route: str, key: str) -> KeyRow | None:
        """The run an idempotency key on a route is bound to, with its fingerprint."""

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        """Delete up to `limit` runs that finished before cutoff, with their steps,
        step errors, attempts, pending rows, idempotency keys and streamed bodies, and up
        to `limit` events older than cutoff, in one short transaction. A streamed body
        goes `limit` chunks per call at most, its run once none is left. Returns the
        largest of the three counts (runs, events, chunks).

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

    async def add_event(
        self, event_id: str, name: str, data: bytes, ts: float, *, page: int = 500
    ) -> AddedEvent:
        """Record an event and complete the waits it matches, in one transaction.

        `data` is its JSON. Completes every pending wait on `name` of a suspended run
        whose `match` it fits (`wire.event_matches` on `wire.event_output(event_id, name,
        data, ts)`) and whose step is not done, as `complete_wait` would with that event
        object (keys sorted) as output, the run due at `ts`. A stored event has therefore
        woken every run it matched: a crash leaves both or neither. A known id changes
        nothing and completes nothing (`new` False).

        Finds waits through an index on their match keys (`gateway.store.match_keys`),
        never by reading every wait of the name; reads `page` rows at a time.
        """

    async def complete_wait(self, run_id: str, step_id: str, output: bytes, now: float) -> bool:
        """Complete a pending wait with `output`, in one transaction: store the step
        (at the run's current attempt), delete the pending row, and make a suspended
        run due now. False, changing nothing, when the wait is gone or its step is done
        already, so two events never both complete one wait. For an event that came
        while the wait's run was live (`add_event` leaves those to the run).
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
        """A run's completed steps in the order they were recorded, with their sizes and
        the timing their backend reported (None where it sent none)."""

    async def list_step_errors(self, run_id: str) -> tuple[list[StepErrorRow], int]:
        """A run's kept step errors in the order they were recorded, and how many more
        were reported past the bound (STEP_ERRORS_KEPT) and only counted."""


class Notice(StrEnum):
    """What a node hears of another node's committed changes (`Cluster.join`)."""

    RUN = "run"
    """A run changed state (finished, cancelled, suspended, paused, began streaming):
    wake its waiters."""
    CANCEL = "cancel"
    """A run was cancelled: the node driving it stops its attempt."""
    RESYNC = "resync"
    """Notices may have been missed (the connection that hears them dropped): re-read
    the store for everything waited on. Its run id is empty."""


OnNotice = Callable[[Notice, str], None]
"""Called with each notice and its run id, on the event loop."""


class Cluster(Protocol):
    """How the nodes sharing a store see each other: presence, takeover, fencing, notices.

    A node's presence lasts as long as its process (PostgreSQL: a session-level advisory
    lock on a connection of its own), so a dead node is seen at once, not at its leases'
    expiry. On a store only one process can use (SQLite), all of this is a no-op.
    """

    async def join(self, owner: str, on_notice: OnNotice) -> None:
        """Announce this process as `owner` and start hearing notices; raises
        StoreUnavailable when the store cannot be reached. Keeps itself joined: a
        dropped connection is re-established, then RESYNC is heard."""

    async def absent(self, owner: str, now: float) -> list[str]:
        """Owners other than `owner` holding unexpired leases on active runs whose
        process is gone."""

    async def take_over(
        self, owner: str, gone: Sequence[str], now: float, lease_ttl: float, limit: int
    ) -> list[RunRow]:
        """Lease up to `limit` active runs of the `gone` owners to `owner` (atomic, as
        `claim_unfinished`), due ones first."""

    async def taken(self, owner: str, run_ids: Sequence[str]) -> list[str]:
        """Those of `run_ids` (runs `owner` drives and has stored) no longer leased to
        `owner`: another node took them, and may have finished or parked them since."""

    async def leave(self) -> None:
        """End this process's presence and stop hearing notices. Idempotent."""


class FullStore(Store, SuspensionStore, RunQueries, Protocol):
    """Everything a database offers the gateway; what `open_store` returns."""

    @property
    def cluster(self) -> Cluster:
        """The other nodes sharing this store, as far as this node deals with them."""
