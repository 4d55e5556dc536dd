"""The run view: one read of a run, merging what this process drives with the store.

Handlers read runs only through here, so "live here, or stored" is decided in one place;
the view never changes a run (the driver does). A live run's status, attempt, wake time
and response are newer than its row's, which the writer has yet to catch up with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.engine.driver import Driver
from gateway.engine.gate import Waiting
from gateway.engine.live import LiveRun
from gateway.store import (
    FINAL_STATUSES,
    FullStore,
    RunRow,
    RunStatus,
    RunSummary,
    StoredRequest,
    StoredResponse,
)


@dataclass(frozen=True, slots=True)
class RunState:
    """A run as the APIs show it: the stored row, overlaid by the live run when there is one."""

    run_id: str
    route: str
    status: str
    attempt: int
    created_at: float
    updated_at: float | None
    """None for a live run not read from the store."""
    finished_at: float | None
    wake_at: float | None
    request: StoredRequest
    response: StoredResponse | None
    live: LiveRun | None
    owner: str | None = None
    """The lease owner driving it (a node id and a per-start part), while one does."""
    waiting: str | None = None
    """Why it waits for its next attempt until `wake_at` (`gate.Waiting`): a retry's
    backoff, the retry budget or an open circuit breaker; None when it does not."""

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Keyed:
    """The run an idempotency key is bound to, and how it stands."""

    run_id: str
    fingerprint: str | None
    """None for a live run that came back from the store (its key was checked there)."""
    live: LiveRun | None
    response: StoredResponse | None
    """The stored final response of a run that is not live here; None while unfinished."""


class RunView:
    def __init__(self, driver: Driver, store: FullStore) -> None:
        self._driver = driver
        self._store = store

    async def get(self, run_id: str, *, stored: bool = False) -> RunState | None:
        """The run's state; with `stored`, read the store even for a live run (for the
        times only the row has)."""
        live = self._driver.get(run_id)
        row = None
        if live is None or stored:
            row = await self._store.get_run(run_id)
            live = self._driver.get(run_id)  # it may have become live during the read
        if live is None:
            return None if row is None else _from_row(row)
        return _from_live(live, row, self._driver.owner)

    def overlay(self, summary: RunSummary) -> RunSummary:
        """A listed run with its live status, attempt and wake time, when it is live here."""
        live = self._driver.get(summary.run_id)
        if live is None:
            return summary
        run = live.run
        return dataclasses.replace(
            summary, status=run.status.value, attempt=run.attempt, wake_at=run.wake_at
        )

    async def steps(self, run_id: str) -> dict[str, bytes] | None:
        """The run's completed steps; None for an unknown run."""
        live = self._driver.get(run_id)
        if live is not None:
            return live.run.steps
        if await self._store.get_run(run_id) is None:
            return None
        return await self._store.load_steps(run_id)

    async def keyed(self, route: str, key: str) -> Keyed | None:
        """The run an idempotency key on a route belongs to; None when the key is free
        (never used, or its run purged)."""
        live = self._driver.attached(route, key)
        if live is None:
            found = await self._store.find_idempotency(route, key)
            live = self._driver.attached(route, key)  # admitted while we were reading
            if live is None:
                if found is None:
                    return None
                live = self._driver.get(found.run_id)
                if live is None:
                    row = await self._store.get_run(found.run_id)
                    if row is None:
                        return None  # purged a moment ago: the key is free again
                    return Keyed(found.run_id, found.fingerprint, None, row.response)
                return Keyed(found.run_id, found.fingerprint, live, None)
        fingerprint = live.idempotency.fingerprint if live.idempotency is not None else None
        return Keyed(live.run.run_id, fingerprint, live, None)


def _from_row(row: RunRow) -> RunState:
    return RunState(
        row.run_id,
        row.route,
        row.status,
        row.attempt,
        row.created_at,
        row.updated_at,
        row.finished_at,
        row.wake_at,
        row.request,
        row.response,
        None,
        row.owner if row.status not in FINAL_STATUSES else None,
        Waiting.BACKOFF if row.status == RunStatus.BACKOFF and row.wake_at is not None else None,
    )


def _from_live(live: LiveRun, row: RunRow | None, owner: str) -> RunState:
    run = live.run
    response = run.response
    if response is None and row is not None:
        response = row.response
    return RunState(
        run.run_id,
        run.route.name,
        run.status.value,
        run.attempt,
        run.created_at,
        None if row is None else row.updated_at,
        None if row is None else row.finished_at,
        run.wake_at,
        run.request,
        response,
        live,
        None if run.finished else owner,
        _waiting(live),
    )


def _waiting(live: LiveRun) -> str | None:
    run = live.run
    if live.waiting is not None:
        return live.waiting
    if run.status is RunStatus.BACKOFF and run.wake_at is not None:
        return Waiting.BACKOFF
    return None
