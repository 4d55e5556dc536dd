"""SQLite side of the admin reads: runs a page at a time, a run's steps with their sizes
and its step errors.

Never loads a request, response or step body: the listing reads resp_status from its
index, and step sizes come from length(), which SQLite answers from the row header.
"""

from __future__ import annotations

from typing import Final

from gateway.store.records import RunSummary, StepErrorRow, StepRow
from gateway.store.rows import list_runs_query, page, step_errors
from gateway.store.sqlite.connection import SqliteConnections

STEPS: Final = (
    "SELECT step_id, attempt, created_at, length(output) FROM steps"
    " WHERE run_id = ? ORDER BY created_at, step_id"
)

# In the order they were recorded; `dropped` counts errors after the last kept one.
STEP_ERRORS: Final = (
    "SELECT step_id, attempt, message, created_at, dropped FROM step_errors"
    " WHERE run_id = ? ORDER BY seq"
)


class RunListing(SqliteConnections):
    """The RunQueries Protocol on SQLite."""

    __slots__ = ()

    async def list_runs(
        self, route: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[RunSummary], str | None]:
        sql, params = list_runs_query(route, status, limit, cursor)
        return page(await self._read_all(sql, *params), limit)

    async def list_steps(self, run_id: str) -> list[StepRow]:
        return [StepRow(*row) for row in await self._read_all(STEPS, run_id)]

    async def list_step_errors(self, run_id: str) -> tuple[list[StepErrorRow], int]:
        return step_errors(await self._read_all(STEP_ERRORS, run_id))
