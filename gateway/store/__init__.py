"""Storage seam: the records, the writes the group-commit writer batches, the Store Protocol.

Everything that touches the database goes through `Store`; each dialect file holds
its own SQL. The request path never awaits a store call on the happy path: writes are
queued on `writer.Writer` and committed in batches by one task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """What a run re-sends on every attempt, including after a restart."""

    method: str
    path_qs: str
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A run's final response, replayed verbatim by its result URL."""

    status: int
    headers: Headers
    body: bytes


# --- writes: small records the writer batches into one transaction ---------------


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class PutStep:
    """A completed step; first write wins (INSERT that ignores an existing key)."""

    run_id: str
    step_id: str
    output: bytes
    """Canonical JSON bytes of the output."""
    attempt: int
    created_at: float


@dataclass(frozen=True, slots=True)
class RecordAttempt:
    run_id: str
    attempt: int
    started_at: float
    ended_at: float
    outcome: str
    """`response`, `connect_error`, `timeout` or `suspended`."""
    status: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateRun:
    """A run's state between attempts: status, attempt number, when it wakes."""

    run_id: str
    status: str
    attempt: int
    wake_at: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class FinishRun:
    """A run's final response; also releases its lease (owner and lease_until cleared)."""

    run_id: str
    status: str
    """`succeeded` or `failed`."""
    response: StoredResponse
    finished_at: float


Write = CreateRun | PutStep | RecordAttempt | UpdateRun | FinishRun

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
"""A run in any other status is unfinished: recovery claims it, retention keeps it."""


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

    async def list_attempts(self, run_id: str) -> list[AttemptRow]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store value under key unless one is there; return the value that is."""

    async def claim_unfinished(
        self, owner: str, now: float, lease_ttl: float, limit: int = 1000, *, steal: bool = False
    ) -> list[RunRow]:
        """Take up to `limit` unfinished runs and lease them to owner until now + lease_ttl.

        Takes runs with no lease or an expired one (`lease_until < now`), or with
        `steal` every unfinished run; never one this owner already holds unexpired, so
        calling again until fewer than `limit` come back pages through all of them
        once (provided the loop ends within `lease_ttl`). Due runs come first
        (`wake_at` NULL first, then by wake_at, then by created_at). Atomic: two
        owners claiming at once never get the same run.
        """

    async def renew_leases(self, owner: str, until: float) -> int:
        """Extend every lease owner holds on an unfinished run; returns how many."""

    async def release_leases(self, owner: str) -> int:
        """Graceful stop: end owner's leases at once (owner kept) so others take the runs."""

    async def find_idempotency(self, route: str, key: str) -> tuple[str, str] | None:
        """The (fingerprint, run id) an idempotency key on a route is bound to."""

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        """Delete up to `limit` runs that finished before cutoff, with their steps,
        attempts and idempotency keys, in one short transaction; returns runs deleted.

        Loop while it returns `limit`, yielding between calls, so requests never wait
        long behind a purge.
        """

    async def close(self) -> None: ...


TEST_MAX_PAGES_ENV = "DURABLE_TEST_SQLITE_MAX_PAGES"
"""Test-only fault point: caps an SQLite store's size in pages so writes fail as on a
full disk (SQLITE_FULL). Never set it in production."""


async def open_store(url: str) -> Store:
    """Open (and migrate) the store a `storage.url` names."""
    if url.startswith("sqlite:"):
        from gateway.store.sqlite import SqliteStore

        max_pages = os.environ.get(TEST_MAX_PAGES_ENV, "").strip()
        if max_pages:
            return await SqliteStore.open(url, max_page_count=int(max_pages))
        return await SqliteStore.open(url)
    raise ValueError(f"unsupported storage url scheme: {url.split(':', 1)[0]!r}")
