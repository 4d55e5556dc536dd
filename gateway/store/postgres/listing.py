"""PostgreSQL side of the admin reads: runs a page at a time, a run's steps with their
sizes and its step errors.

Never loads a request, response or step body: octet_length reads a stored value's size
from its header, and bodies live out of line (TOAST), so a listing reads small rows.
"""

from __future__ import annotations

from typing import Final

from gateway.store.postgres.connection import PostgresConnections
from gateway.store.records import RunSummary, StepErrorRow, StepRow
from gateway.store.rows import list_runs_query, page, step_errors

STEPS: Final = (
    "SELECT step_id, attempt, created_at, octet_length(output) FROM steps"
    " WHERE run_id = $1 ORDER BY created_at, step_id"
)
# In the order they were recorded; `dropped` counts errors after the last kept one.
STEP_ERRORS: Final = (
    "SELECT step_id, attempt, message, created_at, dropped FROM step_errors"
    " WHERE run_id = $1 ORDER BY seq"
)


def _mark(n: int) -> str:
    return f"${n}"


class RunListing(PostgresConnections):
    """The RunQueries Protocol on PostgreSQL."""

    __slots__ = ()

    async def list_runs(
        self, route: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[RunSummary], str | None]:
        sql, params = list_runs_query(route, status, limit, cursor, _mark)
        return page(await self._read_all(sql, *params), limit)

    async def list_steps(self, run_id: str) -> list[StepRow]:
        return [StepRow(*row) for row in await self._read_all(STEPS, run_id)]

    async def list_step_errors(self, run_id: str) -> tuple[list[StepErrorRow], int]:
        return step_errors(await self._read_all(STEP_ERRORS, run_id))
