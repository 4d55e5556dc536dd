"""SQLite statements for the store's writes and reads, and the rows they take and give.

Pure: builds parameters and records, never touches a connection. Used by `sqlite.py` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import orjson

from gateway.store import (
    CreateRun,
    FinishRun,
    Headers,
    PutStep,
    RecordAttempt,
    RunRow,
    StoredRequest,
    StoredResponse,
    UpdateRun,
    Write,
)
from gateway.store.schema import UNFINISHED

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
}

# Written with its CreateRun, after it; the first key on a route wins.
_INSERT_KEY: Final = (
    "INSERT INTO idempotency_keys (route, idem_key, fingerprint, run_id, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (route, idem_key) DO NOTHING"
)

# The table each kind writes; writes to different tables or runs never depend on each other.
_TABLE: Final[dict[type[Any], str]] = {
    CreateRun: "runs",
    UpdateRun: "runs",
    FinishRun: "runs",
    PutStep: "steps",
    RecordAttempt: "attempts",
}

RUN_COLUMNS: Final = (
    "run_id, route, status, attempt, created_at, updated_at, finished_at, wake_at,"
    " method, path_qs, req_headers, req_body, resp_status, resp_headers, resp_body,"
    " owner, lease_until"
)

# Due runs first: no wake time (run now), then the earliest wake, then the oldest;
# run_id only makes the order total, so pages never depend on how ties fall.
CLAIM: Final = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE {UNFINISHED} AND {{which}}"
    " ORDER BY wake_at NULLS FIRST, created_at, run_id LIMIT ?"
)
EXPIRED: Final = "(lease_until IS NULL OR lease_until < ?)"
# Stealing takes live leases too, except this owner's own: it is running those already.
NOT_MINE: Final = "(lease_until IS NULL OR lease_until < ? OR owner IS NOT ?)"

PURGEABLE: Final = (
    "SELECT run_id FROM runs WHERE finished_at < ?"
    " AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?"
)
# Dependents first; the run row goes last, so no key or step ever outlives its run.
PURGE: Final = (
    "DELETE FROM idempotency_keys WHERE run_id = ?",
    "DELETE FROM steps WHERE run_id = ?",
    "DELETE FROM attempts WHERE run_id = ?",
    "DELETE FROM runs WHERE run_id = ?",
)


def group_writes(writes: Sequence[Write]) -> list[list[Write]]:
    """Pack a batch into as few same-kind groups as order allows, one executemany each.

    Only writes to the same (table, run) must keep their order: every statement touches
    rows of its own run in its own table, and the whole batch is one transaction. So a
    write joins the first group of its kind at or after the group holding its
    predecessor on that (table, run), and a group keeps submission order inside it.
    A mixed batch of many runs thus costs about one statement per kind, not per write.
    """
    groups: list[list[Write]] = []
    kinds: list[type[Any]] = []
    last: dict[tuple[str, str], int] = {}
    for write in writes:
        kind = type(write)
        key = (_TABLE[kind], write.run_id)
        index = last.get(key, 0)
        while index < len(groups) and kinds[index] is not kind:
            index += 1
        if index == len(groups):
            groups.append([])
            kinds.append(kind)
        groups[index].append(write)
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
        pairs.append((_SQL[type(group[0])], [_row(w) for w in group]))
        keys = [
            (w.route, w.idempotency[0], w.idempotency[1], w.run_id, w.created_at)
            for w in group
            if isinstance(w, CreateRun) and w.idempotency is not None
        ]
        if keys:
            pairs.append((_INSERT_KEY, keys))
    return pairs
