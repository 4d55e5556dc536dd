"""The store's reads that are one statement and a row decoder, written once for every
dialect: each gives its statements (`ReadSql`) and its `_read_one` / `_read_all`.

Never writes; each read is one statement, so it sees one committed state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from gateway.store.records import (
    AttemptRow,
    BodyRow,
    EventRow,
    KeyRow,
    PendingRow,
    RunRow,
    RunSummary,
    StepErrorRow,
    StepRow,
)
from gateway.store.rows import (
    body_bytes,
    body_row,
    check_range,
    list_runs_query,
    page,
    pending_row,
    run_row,
    step_errors,
)


@dataclass(frozen=True, slots=True)
class ReadSql:
    """A dialect's statement for each read, with the parameters its method passes."""

    get_run: str
    """run_id → RUN_COLUMNS."""
    get_body: str
    """run_id → epoch, attempt, status, headers, stored size."""
    read_body: str
    """run_id, offset, limit → (pos, data) chunks from the one holding offset."""
    load_steps: str
    list_attempts: str
    get_meta: str
    find_key: str
    """route, key → fingerprint, run_id."""
    next_wake: str
    count_timers: str
    count_suspends: str
    count_pending: str
    get_pending: str
    list_pending: str
    events_since: str
    """name, since, limit → events oldest first."""
    list_steps: str
    list_step_errors: str
    mark: Callable[[int], str]
    """The placeholder of the n-th parameter (from 1), for statements built per call."""


class Reads:
    """The reads of Store, SuspensionStore and RunQueries that need no transaction."""

    __slots__ = ()

    reads: ClassVar[ReadSql]

    if TYPE_CHECKING:  # each dialect's connections class has them

        async def _read_one(self, sql: str, *params: Any) -> Any: ...

        async def _read_all(self, sql: str, *params: Any) -> list[Any]: ...

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._read_one(self.reads.get_run, run_id)
        return None if row is None else run_row(row)

    async def get_body(self, run_id: str) -> BodyRow | None:
        row = await self._read_one(self.reads.get_body, run_id)
        return None if row is None else body_row(row)

    async def read_body(self, run_id: str, offset: int, limit: int) -> bytes:
        if not check_range(offset, limit):
            return b""
        rows = await self._read_all(self.reads.read_body, run_id, offset, limit)
        return body_bytes(rows, offset, limit)

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        rows = await self._read_all(self.reads.load_steps, run_id)
        return {row[0]: bytes(row[1]) for row in rows}

    async def list_attempts(self, run_id: str) -> list[AttemptRow]:
        return [AttemptRow(*row) for row in await self._read_all(self.reads.list_attempts, run_id)]

    async def get_meta(self, key: str) -> str | None:
        row = await self._read_one(self.reads.get_meta, key)
        return None if row is None else str(row[0])

    async def find_idempotency(self, route: str, key: str) -> KeyRow | None:
        row = await self._read_one(self.reads.find_key, route, key)
        return None if row is None else KeyRow(str(row[0]), str(row[1]))

    async def next_wake_at(self) -> float | None:
        row = await self._read_one(self.reads.next_wake)
        return None if row is None or row[0] is None else float(row[0])

    async def count_pending(self) -> dict[str, int]:
        counts = {"sleep": 0, "wait": 0}
        for kind, n in await self._read_all(self.reads.count_pending):
            counts[str(kind)] = int(n)
        return counts

    async def count_timers(self) -> int:
        row = await self._read_one(self.reads.count_timers)
        return 0 if row is None else int(row[0])

    async def count_suspends(self, run_id: str) -> int:
        row = await self._read_one(self.reads.count_suspends, run_id)
        return 0 if row is None else int(row[0])

    async def get_pending(self, run_id: str, step_id: str) -> PendingRow | None:
        row = await self._read_one(self.reads.get_pending, run_id, step_id)
        return None if row is None else pending_row(row)

    async def list_pending(self, run_id: str) -> list[PendingRow]:
        return [pending_row(row) for row in await self._read_all(self.reads.list_pending, run_id)]

    async def events_since(self, name: str, since: float, limit: int = 1000) -> list[EventRow]:
        rows = await self._read_all(self.reads.events_since, name, since, limit)
        return [EventRow(row[0], row[1], bytes(row[2]), row[3]) for row in rows]

    async def list_runs(
        self, route: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[RunSummary], str | None]:
        sql, params = list_runs_query(route, status, limit, cursor, self.reads.mark)
        return page(await self._read_all(sql, *params), limit)

    async def list_steps(self, run_id: str) -> list[StepRow]:
        return [StepRow(*row) for row in await self._read_all(self.reads.list_steps, run_id)]

    async def list_step_errors(self, run_id: str) -> tuple[list[StepErrorRow], int]:
        return step_errors(await self._read_all(self.reads.list_step_errors, run_id))
