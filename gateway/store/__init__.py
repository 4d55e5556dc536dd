"""Storage seam: the records, the writes the group-commit writer batches, the Store Protocol.

Everything that touches the database goes through `Store`; each dialect file holds
its own SQL. The request path never awaits a store call on the happy path: writes are
queued on `writer.Writer` and committed in batches by one task.
"""

from __future__ import annotations

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
    run_id: str
    route: str
    request: StoredRequest
    created_at: float
    status: str = "running"


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
    run_id: str
    status: str
    """`succeeded` or `failed`."""
    response: StoredResponse
    finished_at: float


Write = CreateRun | PutStep | RecordAttempt | UpdateRun | FinishRun


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


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: int
    started_at: float
    ended_at: float
    outcome: str
    status: int | None
    detail: str | None


class Store(Protocol):
    """The domain operations the gateway needs from a database."""

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit all writes in one transaction, in order; all or nothing."""

    async def get_run(self, run_id: str) -> RunRow | None: ...

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        """Completed steps of a run: step id → canonical JSON bytes of the output."""

    async def list_attempts(self, run_id: str) -> list[AttemptRow]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store value under key unless one is there; return the value that is."""

    async def close(self) -> None: ...


async def open_store(url: str) -> Store:
    """Open (and migrate) the store a `storage.url` names."""
    if url.startswith("sqlite:"):
        from gateway.store.sqlite import SqliteStore

        return await SqliteStore.open(url)
    raise ValueError(f"unsupported storage url scheme: {url.split(':', 1)[0]!r}")
