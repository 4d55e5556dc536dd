"""SQLite side of the admin reads: runs a page at a time, a run's steps with their sizes
and its step errors.

Never loads a request, response or step body: the listing reads resp_status from its
index, and step sizes come from length(), which SQLite answers from the row header.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Final

from gateway.store.records import RunSummary, StepErrorRow, StepRow
from gateway.store.sqlite.connection import SqliteConnections

SUMMARY_COLUMNS: Final = (
    "run_id, route, status, attempt, created_at, updated_at, finished_at, wake_at,"
    " method, path_qs, resp_status"
)
# Newest first, run_id breaking ties: the listing indexes end in (created_at, run_id),
# so a page is an index range, never a sort of the whole table.
NEWEST_FIRST: Final = "ORDER BY created_at DESC, run_id DESC"
STEPS: Final = (
    "SELECT step_id, attempt, created_at, length(output) FROM steps"
    " WHERE run_id = ? ORDER BY created_at, step_id"
)

# In the order they were recorded; `dropped` counts errors after the last kept one.
STEP_ERRORS: Final = (
    "SELECT step_id, attempt, message, created_at, dropped FROM step_errors"
    " WHERE run_id = ? ORDER BY seq"
)


def encode_cursor(created_at: float, run_id: str) -> str:
    """The opaque position after a run: base64url of `created_at|run_id`, unpadded."""
    raw = f"{created_at!r}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, run_id) from `encode_cursor`; ValueError for anything else."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        created, sep, run_id = raw.decode().partition("|")
        created_at = float(created)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError(f"malformed cursor: {cursor!r}") from None
    if not sep or not run_id or not math.isfinite(created_at):
        raise ValueError(f"malformed cursor: {cursor!r}")
    return created_at, run_id


def list_runs_query(
    route: str | None, status: str | None, limit: int, cursor: str | None
) -> tuple[str, list[Any]]:
    """The page's SELECT and parameters; it asks for one run more, to tell if one follows."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    terms: list[str] = []
    params: list[Any] = []
    if route is not None:
        terms.append("route = ?")
        params.append(route)
    if status is not None:
        terms.append("status = ?")
        params.append(status)
    if cursor is not None:
        terms.append("(created_at, run_id) < (?, ?)")
        params.extend(decode_cursor(cursor))
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    params.append(limit + 1)
    return f"SELECT {SUMMARY_COLUMNS} FROM runs{where} {NEWEST_FIRST} LIMIT ?", params


class RunListing(SqliteConnections):
    """The RunQueries Protocol on SQLite."""

    __slots__ = ()

    async def list_runs(
        self, route: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[RunSummary], str | None]:
        sql, params = list_runs_query(route, status, limit, cursor)
        rows = await self._read_all(sql, *params)
        page = [RunSummary(*row) for row in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        return page, encode_cursor(page[-1].created_at, page[-1].run_id)

    async def list_steps(self, run_id: str) -> list[StepRow]:
        return [StepRow(*row) for row in await self._read_all(STEPS, run_id)]

    async def list_step_errors(self, run_id: str) -> tuple[list[StepErrorRow], int]:
        rows = await self._read_all(STEP_ERRORS, run_id)
        return [StepErrorRow(*row[:4]) for row in rows], sum(row[4] for row in rows)
