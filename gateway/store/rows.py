"""Rows as both dialects bind and read them: each write's statement parameters, records
from selected rows, body ranges, listing pages and their cursors.

Pure: no connection, no dialect. Column lists here are plain SQL that both dialects
select; each dialect's statements bind `params(write)` in the order given here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from gateway.store.batch import CreatedFinished, decode_headers, encode_headers
from gateway.store.match_keys import wait_columns
from gateway.store.records import (
    AppendBody,
    BeginBody,
    BodyRow,
    CancelRun,
    CreateRun,
    DropPending,
    FinishRun,
    PendingRow,
    PutPending,
    PutStep,
    RecordAttempt,
    RecordStepError,
    ResetRun,
    RunRow,
    RunSummary,
    StepErrorRow,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)


def params(write: Write | CreatedFinished) -> tuple[Any, ...]:
    """Statement parameters for one write, in the order each dialect's statement binds.

    CreateRun: run_id, route, status, attempt, created_at, updated_at, method, path_qs,
    req_headers, req_body, owner, lease_until. CreatedFinished: run_id, route, status,
    attempt, created_at, updated_at, finished_at, method, path_qs, req_headers, req_body,
    resp_status, resp_headers, resp_body, resp_kept. The rest read off the cases below:
    run-state writes (UpdateRun, FinishRun, SuspendRun, CancelRun, ResetRun) end with
    run_id, so a dialect can add a guard's parameters after it.
    """
    match write:
        case PutStep():
            return (
                write.run_id,
                write.step_id,
                write.output,
                write.attempt,
                write.created_at,
                write.started_at,
                write.duration_ms,
            )
        case CreateRun(request=req):
            return (
                write.run_id,
                write.route,
                write.status,
                write.attempt,
                write.created_at,
                write.created_at,
                req.method,
                req.path_qs,
                encode_headers(req.headers),
                req.body,
                write.owner,
                write.lease_until,
            )
        case CreatedFinished(create=create, finish=finish):
            return (
                create.run_id,
                create.route,
                finish.status,
                create.attempt,
                create.created_at,
                finish.finished_at,
                finish.finished_at,
                create.request.method,
                create.request.path_qs,
                encode_headers(create.request.headers),
                create.request.body,
                finish.response.status,
                encode_headers(finish.response.headers),
                finish.response.body,
                finish.response.kept,
            )
        case RecordStepError():
            return (write.run_id, write.step_id, write.attempt, write.message, write.created_at)
        case RecordAttempt():
            return (
                write.run_id,
                write.attempt,
                write.started_at,
                write.ended_at,
                write.outcome,
                write.status,
                write.detail,
            )
        case UpdateRun():
            return (write.status, write.attempt, write.wake_at, write.updated_at, write.run_id)
        case FinishRun(response=resp):
            return (
                write.status,
                resp.status,
                encode_headers(resp.headers),
                resp.body,
                resp.kept,
                write.finished_at,
                write.finished_at,
                write.run_id,
            )
        case PutPending():
            paths, match = None, write.match
            if write.kind == "wait":
                paths, match = wait_columns(write.match)
            return (
                write.run_id,
                write.step_id,
                write.kind,
                write.wake_at,
                write.event,
                match,
                write.created_at,
                paths,
            )
        case DropPending():
            return (write.run_id, write.step_id)
        case SuspendRun():
            return (
                write.attempt,
                write.wake_at,
                write.updated_at,
                write.suspended_on,
                write.updated_at,
                write.run_id,
            )
        case CancelRun(response=resp):
            return (
                resp.status,
                encode_headers(resp.headers),
                resp.body,
                resp.kept,
                write.finished_at,
                write.finished_at,
                write.run_id,
            )
        case ResetRun():
            return (
                write.attempt,
                write.updated_at,
                write.owner,
                write.lease_until,
                write.run_id,
            )
        case BeginBody():
            return (
                write.run_id,
                write.epoch,
                write.attempt,
                write.status,
                encode_headers(write.headers),
            )
        case AppendBody():
            return (write.run_id, write.offset, write.data)


def by_run(write: Write | CreatedFinished) -> tuple[Any, ...]:
    """Parameters of a statement about a write's run alone."""
    return (write.run_id,)


def with_keep(write: Write | CreatedFinished) -> tuple[Any, ...]:
    """A BeginBody's run and how many bytes of its stored chunks it keeps."""
    assert isinstance(write, BeginBody)
    return (write.run_id, write.keep)


def key_params(group: Iterable[Write | CreatedFinished]) -> list[tuple[Any, ...]]:
    """The idempotency keys a group of run creations carries, as (route, idem_key,
    fingerprint, run_id, created_at) rows; written after the runs, first key wins."""
    creates = (w.create if isinstance(w, CreatedFinished) else w for w in group)
    return [
        (w.route, w.idempotency.key, w.idempotency.fingerprint, w.run_id, w.created_at)
        for w in creates
        if isinstance(w, CreateRun) and w.idempotency is not None
    ]


def keyed_params(write: CreateRun) -> tuple[Any, ...]:
    """The key row of a keyed creation (see Store.create_keyed); ValueError without one."""
    rows = key_params([write])
    if not rows:
        raise ValueError("create_keyed needs a run with an idempotency key")
    return rows[0]


RUN_COLUMNS: Final = (
    "run_id, route, status, attempt, created_at, updated_at, finished_at, wake_at,"
    " method, path_qs, req_headers, req_body, resp_status, resp_headers, resp_body,"
    " owner, lease_until, resp_kept, suspended_on, suspended_at"
)


def run_row(row: Any) -> RunRow:
    """A `runs` row selected as RUN_COLUMNS, as a record."""
    response = None
    if row[12] is not None:
        response = StoredResponse(row[12], decode_headers(row[13]), bytes(row[14]), row[17])
    return RunRow(
        run_id=row[0],
        route=row[1],
        status=row[2],
        attempt=row[3],
        created_at=row[4],
        updated_at=row[5],
        finished_at=row[6],
        wake_at=row[7],
        request=StoredRequest(row[8], row[9], decode_headers(row[10]), bytes(row[11])),
        response=response,
        owner=row[15],
        lease_until=row[16],
        suspended_on=row[18],
        suspended_at=row[19],
    )


def leased(rows: Iterable[RunRow], owner: str, until: float, **changes: Any) -> list[RunRow]:
    """Claimed rows as read, with the lease (and any other `changes`) the claim set."""
    return [dataclasses.replace(row, owner=owner, lease_until=until, **changes) for row in rows]


def body_row(row: Any) -> BodyRow:
    """A `bodies` row selected as (epoch, attempt, status, headers, size), as a record."""
    return BodyRow(row[0], row[1], row[2], decode_headers(row[3]), row[4])


def body_bytes(rows: Sequence[Any], offset: int, limit: int) -> bytes:
    """Up to `limit` contiguous bytes from `offset` out of (pos, data) chunk rows from the
    one holding `offset` on; stops at a gap, so bytes never splice across missing ones."""
    parts: list[bytes] = []
    at, need = offset, limit
    for pos, data in rows:
        if pos > at or need <= 0:
            break
        piece = bytes(data[at - pos : at - pos + need])
        if piece:
            parts.append(piece)
            at += len(piece)
            need -= len(piece)
    return b"".join(parts)


def check_range(offset: int, limit: int) -> bool:
    """Validate a `read_body` range; False when it asks for nothing (read no row)."""
    if offset < 0:
        raise ValueError(f"read_body offset must be >= 0, not {offset}")
    return limit > 0


PENDING_COLUMNS: Final = "run_id, step_id, kind, wake_at, event, match, created_at"


def pending_row(row: Any) -> PendingRow:
    """A `pending` row selected as PENDING_COLUMNS, as a record."""
    match = None if row[5] is None else bytes(row[5])
    return PendingRow(row[0], row[1], row[2], row[3], row[4], match, row[6])


# --- the admin listing: keyset pages, newest first ---------------------------------

SUMMARY_COLUMNS: Final = (
    "run_id, route, status, attempt, created_at, updated_at, finished_at, wake_at,"
    " method, path_qs, resp_status"
)
# Newest first, run_id breaking ties: the listing indexes end in (created_at, run_id),
# so a page is an index range, never a sort of the whole table.
NEWEST_FIRST: Final = "ORDER BY created_at DESC, run_id DESC"


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
    route: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    mark: Callable[[int], str] = lambda n: "?",
) -> tuple[str, list[Any]]:
    """The page's SELECT and parameters; it asks for one run more, to tell if one follows.

    `mark(n)` is the dialect's placeholder for the n-th parameter (from 1).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    terms: list[str] = []
    args: list[Any] = []

    def bind(value: Any) -> str:
        args.append(value)
        return mark(len(args))

    if route is not None:
        terms.append(f"route = {bind(route)}")
    if status is not None:
        terms.append(f"status = {bind(status)}")
    if cursor is not None:
        created_at, run_id = decode_cursor(cursor)
        terms.append(f"(created_at, run_id) < ({bind(created_at)}, {bind(run_id)})")
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    return f"SELECT {SUMMARY_COLUMNS} FROM runs{where} {NEWEST_FIRST} LIMIT {bind(limit + 1)}", args


def page(rows: Sequence[Any], limit: int) -> tuple[list[RunSummary], str | None]:
    """Rows of `list_runs_query` as one page of summaries and the next page's cursor."""
    summaries = [RunSummary(*row) for row in rows[:limit]]
    if len(rows) <= limit:
        return summaries, None
    return summaries, encode_cursor(summaries[-1].created_at, summaries[-1].run_id)


def step_errors(rows: Sequence[Any]) -> tuple[list[StepErrorRow], int]:
    """(step_id, attempt, message, created_at, dropped) rows in seq order as the kept
    errors and how many more were only counted (see RunQueries.list_step_errors)."""
    return [StepErrorRow(*row[:4]) for row in rows], sum(row[4] for row in rows)
