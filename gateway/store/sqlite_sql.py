"""SQLite statements for the store's writes and reads, and the rows they take and give.

Pure: builds parameters and records, never touches a connection. Used by `sqlite.py` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import orjson

from gateway.store import (
    CancelRun,
    CreateRun,
    DropPending,
    FinishRun,
    Headers,
    PutPending,
    PutStep,
    RecordAttempt,
    ResetRun,
    RunRow,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.schema import ACTIVE, UNFINISHED

# One statement per kind of write. Parameters come from `_row` in the same order.
_SQL: Final[dict[type[Any], str]] = {
    CreateRun: (
        "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at,"
        " method, path_qs, req_headers, req_body, owner, lease_until)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING"
    ),
    PutStep: (
        "INSERT INTO steps (run_id, step_id, output, attempt, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO NOTHING"
    ),
    RecordAttempt: (
        "INSERT INTO attempts (run_id, attempt, started_at, ended_at, outcome, status, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, attempt) DO UPDATE SET"
        " started_at = excluded.started_at, ended_at = excluded.ended_at,"
        " outcome = excluded.outcome, status = excluded.status, detail = excluded.detail"
    ),
    UpdateRun: (
        "UPDATE runs SET status = ?, attempt = ?, wake_at = ?, updated_at = ? WHERE run_id = ?"
    ),
    FinishRun: (
        "UPDATE runs SET status = ?, resp_status = ?, resp_headers = ?, resp_body = ?,"
        " finished_at = ?, updated_at = ?, wake_at = NULL, owner = NULL, lease_until = NULL"
        " WHERE run_id = ?"
    ),
    PutPending: (
        "INSERT INTO pending (run_id, step_id, kind, wake_at, event, match, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO NOTHING"
    ),
    # One statement for both: a NULL step id matches every step of the run.
    DropPending: "DELETE FROM pending WHERE run_id = ? AND step_id = coalesce(?, step_id)",
    # Guarded: a suspension that lost a race with a final write must not revive the run.
    SuspendRun: (
        "UPDATE runs SET status = 'suspended', attempt = ?, wake_at = ?, updated_at = ?,"
        f" owner = NULL, lease_until = NULL WHERE run_id = ? AND {UNFINISHED}"
    ),
    # Guarded: a run that finished first keeps its real result.
    CancelRun: (
        "UPDATE runs SET status = 'cancelled', resp_status = ?, resp_headers = ?,"
        " resp_body = ?, finished_at = ?, updated_at = ?, wake_at = NULL, owner = NULL,"
        f" lease_until = NULL WHERE run_id = ? AND {UNFINISHED}"
    ),
    ResetRun: (
        "UPDATE runs SET status = 'running', attempt = ?, updated_at = ?, finished_at = NULL,"
        " resp_status = NULL, resp_headers = NULL, resp_body = NULL, wake_at = NULL,"
        " owner = ?, lease_until = ? WHERE run_id = ?"
    ),
}

# Run after their kind's statement, with (run_id,) per write: a run that ends leaves
# no pending sleep or wait behind.
_DROP_ALL_PENDING: Final = "DELETE FROM pending WHERE run_id = ?"
_ALSO: Final[dict[type[Any], str]] = {FinishRun: _DROP_ALL_PENDING, CancelRun: _DROP_ALL_PENDING}

# Written with its CreateRun, after it; the first key on a route wins.
_INSERT_KEY: Final = (
    "INSERT INTO idempotency_keys (route, idem_key, fingerprint, run_id, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (route, idem_key) DO NOTHING"
)

# The tables each kind writes; writes to different tables or runs never depend on
# each other. (CreateRun's idempotency key is only ever written by CreateRun.)
_TABLES: Final[dict[type[Any], tuple[str, ...]]] = {
    CreateRun: ("runs",),
    UpdateRun: ("runs",),
    FinishRun: ("runs", "pending"),
    SuspendRun: ("runs",),
    CancelRun: ("runs", "pending"),
    ResetRun: ("runs",),
    PutStep: ("steps",),
    RecordAttempt: ("attempts",),
    PutPending: ("pending",),
    DropPending: ("pending",),
}

RUN_COLUMNS: Final = (
    "run_id, route, status, attempt, created_at, updated_at, finished_at, wake_at,"
    " method, path_qs, req_headers, req_body, resp_status, resp_headers, resp_body,"
    " owner, lease_until"
)

# Due runs first: no wake time (run now), then the earliest wake, then the oldest;
# run_id only makes the order total, so pages never depend on how ties fall.
CLAIM: Final = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE {ACTIVE} AND {{which}}"
    " ORDER BY wake_at NULLS FIRST, created_at, run_id LIMIT ?"
)
EXPIRED: Final = "(lease_until IS NULL OR lease_until < ?)"
# Stealing takes live leases too, except this owner's own: it is running those already.
NOT_MINE: Final = "(lease_until IS NULL OR lease_until < ? OR owner IS NOT ?)"

# Suspended runs hold no lease, paused ones need none: both stay out of the lease index.
RENEW: Final = f"UPDATE runs SET lease_until = ? WHERE owner = ? AND {ACTIVE}"
RELEASE: Final = f"UPDATE runs SET lease_until = NULL WHERE owner = ? AND {ACTIVE}"

# Named: with no statistics the planner reads every finished run through the status
# listing index and sorts them, instead of a range of runs_finished.
PURGEABLE: Final = (
    "SELECT run_id FROM runs INDEXED BY runs_finished WHERE finished_at < ?"
    " AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?"
)
# Dependents first; the run row goes last, so no key or step ever outlives its run.
PURGE: Final = (
    "DELETE FROM idempotency_keys WHERE run_id = ?",
    "DELETE FROM steps WHERE run_id = ?",
    "DELETE FROM attempts WHERE run_id = ?",
    "DELETE FROM pending WHERE run_id = ?",
    "DELETE FROM runs WHERE run_id = ?",
)
# Oldest first through events_ts; rowids, so the delete needs no second key lookup.
PURGE_EVENTS: Final = (
    "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE ts < ? ORDER BY ts LIMIT ?)"
)


def group_writes(writes: Sequence[Write]) -> list[list[Write]]:
    """Pack a batch into as few same-kind groups as order allows, one executemany each.

    Only writes to the same (table, run) must keep their order: every statement touches
    rows of its own run in its own tables, and the whole batch is one transaction. So a
    write joins the first group of its kind at or after the groups holding its
    predecessors on each of its (table, run) pairs, and a group keeps submission order.
    A mixed batch of many runs thus costs about one statement per kind, not per write.
    """
    groups: list[list[Write]] = []
    kinds: list[type[Any]] = []
    last: dict[tuple[str, str], int] = {}
    for write in writes:
        kind = type(write)
        keys = [(table, write.run_id) for table in _TABLES[kind]]
        index = max(last.get(key, 0) for key in keys)
        while index < len(groups) and kinds[index] is not kind:
            index += 1
        if index == len(groups):
            groups.append([])
            kinds.append(kind)
        groups[index].append(write)
        for key in keys:
            last[key] = index
    return groups


def encode_headers(headers: Headers) -> bytes:
    """Header pairs as a JSON array; lossless for aiohttp's surrogate-escaped bytes."""
    try:
        return orjson.dumps(headers)
    except TypeError:
        # orjson refuses lone surrogates (non-UTF-8 header bytes as aiohttp decodes
        # them); the json module escapes them as \udcXX and reads them back intact.
        return json.dumps(headers).encode()


def decode_headers(raw: bytes) -> Headers:
    try:
        pairs = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pairs = json.loads(raw)
    return [(str(name), str(value)) for name, value in pairs]


def _row(write: Write) -> tuple[Any, ...]:
    """Statement parameters for one write, in `_SQL` order."""
    match write:
        case PutStep():
            return (write.run_id, write.step_id, write.output, write.attempt, write.created_at)
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
                write.finished_at,
                write.finished_at,
                write.run_id,
            )
        case PutPending():
            return (
                write.run_id,
                write.step_id,
                write.kind,
                write.wake_at,
                write.event,
                write.match,
                write.created_at,
            )
        case DropPending():
            return (write.run_id, write.step_id)
        case SuspendRun():
            return (write.attempt, write.wake_at, write.updated_at, write.run_id)
        case CancelRun(response=resp):
            return (
                resp.status,
                encode_headers(resp.headers),
                resp.body,
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


def run_row(row: Any) -> RunRow:
    """A `runs` row selected as RUN_COLUMNS, as a record."""
    response = None
    if row[12] is not None:
        response = StoredResponse(row[12], decode_headers(row[13]), bytes(row[14]))
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
    )


def plan(writes: Sequence[Write]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The batch as (statement, parameter rows) pairs, one executemany each, in order."""
    pairs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for group in group_writes(writes):
        kind = type(group[0])
        pairs.append((_SQL[kind], [_row(w) for w in group]))
        also = _ALSO.get(kind)
        if also is not None:
            pairs.append((also, [(w.run_id,) for w in group]))
        keys = [
            (w.route, w.idempotency[0], w.idempotency[1], w.run_id, w.created_at)
            for w in group
            if isinstance(w, CreateRun) and w.idempotency is not None
        ]
        if keys:
            pairs.append((_INSERT_KEY, keys))
    return pairs
