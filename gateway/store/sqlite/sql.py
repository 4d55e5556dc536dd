"""SQLite statements for the store's writes and reads, and how a batch becomes them.

Pure: builds statements, never touches a connection. The rows they bind and give back
are the dialects' shared `gateway.store.rows`.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

from gateway.store.batch import CreatedFinished, coalesce, group_writes
from gateway.store.records import (
    FINAL_STATUSES,
    STEP_ERRORS_KEPT,
    AppendBody,
    BeginBody,
    CancelRun,
    CreateRun,
    DropPending,
    FinishRun,
    PutPending,
    PutStep,
    RecordAttempt,
    RecordStepError,
    ReplaceResult,
    ResetRun,
    RunStatus,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.rows import RUN_COLUMNS, by_run, key_params, params, with_keep
from gateway.store.schema import ACTIVE, UNFINISHED

_FINISH: Final = (
    "UPDATE runs SET status = ?, resp_status = ?, resp_headers = ?, resp_body = ?,"
    " resp_kept = ?, finished_at = ?, updated_at = ?, wake_at = NULL, owner = NULL,"
    " lease_until = NULL WHERE run_id = ?"
)

# One statement per kind of write. Parameters come from `rows.params` in the same order.
_SQL: Final[dict[type[Any], str]] = {
    CreateRun: (
        "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at,"
        " method, path_qs, req_headers, req_body, owner, lease_until)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING"
    ),
    CreatedFinished: (
        "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at,"
        " finished_at, method, path_qs, req_headers, req_body, resp_status, resp_headers,"
        " resp_body, resp_kept) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id) DO NOTHING"
    ),
    PutStep: (
        "INSERT INTO steps (run_id, step_id, output, attempt, created_at, started_at,"
        " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO NOTHING"
    ),
    # The next free seq of the run, up to the last kept one: once that is taken, the
    # conflict counts the error in its row instead (see the schema's version 5).
    RecordStepError: (
        "INSERT INTO step_errors (run_id, seq, step_id, attempt, message, created_at)"
        f" SELECT ?1, min(count(*), {STEP_ERRORS_KEPT - 1}), ?2, ?3, ?4, ?5 FROM step_errors"
        " WHERE run_id = ?1 ON CONFLICT (run_id, seq) DO UPDATE SET dropped = dropped + 1"
    ),
    RecordAttempt: (
        "INSERT INTO attempts (run_id, attempt, started_at, ended_at, outcome, status, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, attempt) DO UPDATE SET"
        " started_at = excluded.started_at, ended_at = excluded.ended_at,"
        " outcome = excluded.outcome, status = excluded.status, detail = excluded.detail"
    ),
    # Guarded: a final result is never overwritten (the same guard as PostgreSQL's).
    UpdateRun: (
        "UPDATE runs SET status = ?, attempt = ?, wake_at = ?, updated_at = ?,"
        f" suspended_on = NULL, suspended_at = NULL WHERE run_id = ? AND {UNFINISHED}"
    ),
    FinishRun: _FINISH + f" AND {UNFINISHED}",
    ReplaceResult: _FINISH,
    # A wait's match goes in canonical, with its path list: the match index's key.
    PutPending: (
        "INSERT INTO pending (run_id, step_id, kind, wake_at, event, match, created_at, paths)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO NOTHING"
    ),
    # One statement for both: a NULL step id matches every step of the run.
    DropPending: "DELETE FROM pending WHERE run_id = ? AND step_id = coalesce(?, step_id)",
    # Guarded: a suspension that lost a race with a final write must not revive the run.
    SuspendRun: (
        f"UPDATE runs SET status = '{RunStatus.SUSPENDED}', attempt = ?, wake_at = ?,"
        " updated_at = ?, suspended_on = ?, suspended_at = ?,"
        f" owner = NULL, lease_until = NULL WHERE run_id = ? AND {UNFINISHED}"
    ),
    # Guarded: a run that finished first keeps its real result.
    CancelRun: (
        f"UPDATE runs SET status = '{RunStatus.CANCELLED}', resp_status = ?, resp_headers = ?,"
        " resp_body = ?, resp_kept = ?, finished_at = ?, updated_at = ?, wake_at = NULL,"
        f" owner = NULL, lease_until = NULL WHERE run_id = ? AND {UNFINISHED}"
    ),
    ResetRun: (
        f"UPDATE runs SET status = '{RunStatus.RUNNING}', attempt = ?, updated_at = ?,"
        " finished_at = NULL,"
        " resp_status = NULL, resp_headers = NULL, resp_body = NULL, resp_kept = NULL,"
        " wake_at = NULL, owner = ?, lease_until = ? WHERE run_id = ?"
    ),
    # A new head (and epoch) replaces the old; its chunks are cut by `_ALSO`.
    BeginBody: (
        "INSERT INTO bodies (run_id, epoch, attempt, status, headers) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id) DO UPDATE SET epoch = excluded.epoch,"
        " attempt = excluded.attempt, status = excluded.status, headers = excluded.headers"
    ),
    # The hot path of a streamed response: `multi_row` makes a batch's chunks one insert.
    # A chunk already at its offset stays (a retry re-sending the same bytes).
    AppendBody: (
        "INSERT INTO body_chunks (run_id, pos, data) VALUES (?, ?, ?)"
        " ON CONFLICT (run_id, pos) DO NOTHING"
    ),
}


# Only a run that this CancelRun (or an earlier one) cancelled: a finished run's
# streamed body is its result, and CancelRun leaves finished runs alone.
_IF_CANCELLED: Final = (
    f"(SELECT run_id FROM runs WHERE run_id = ? AND status = '{RunStatus.CANCELLED}')"
)
_DROP_ALL_PENDING: Final = ("DELETE FROM pending WHERE run_id = ?", by_run)
_Params = Callable[[Write | CreatedFinished], tuple[Any, ...]]


def _drop_body(run: str) -> tuple[tuple[str, _Params], ...]:
    """Delete the streamed body (its chunks, then its head) of the run `run` selects."""
    tables = ("body_chunks", "bodies")
    return tuple((f"DELETE FROM {table} WHERE run_id = {run}", by_run) for table in tables)


# Run after their kind's statement, in order, each with its rows built per write: a run
# that ends leaves no pending sleep or wait behind; a cancelled or reset run no body.
_ALSO: Final[dict[type[Any], tuple[tuple[str, _Params], ...]]] = {
    FinishRun: (_DROP_ALL_PENDING,),
    ReplaceResult: (_DROP_ALL_PENDING,),
    CancelRun: (_DROP_ALL_PENDING, *_drop_body(_IF_CANCELLED)),
    ResetRun: _drop_body("?"),
    # Keep the first `keep` bytes: drop the chunks from there, then cut the one that
    # straddles it (substr counts bytes in a blob).
    BeginBody: (
        ("DELETE FROM body_chunks WHERE run_id = ? AND pos >= ?", with_keep),
        (
            "UPDATE body_chunks SET data = substr(data, 1, ?2 - pos) WHERE run_id = ?1"
            " AND pos = (SELECT max(pos) FROM body_chunks WHERE run_id = ?1 AND pos < ?2)"
            " AND pos + length(data) > ?2",
            with_keep,
        ),
    ),
}

# Written with its CreateRun, after it; the first key on a route wins.
_INSERT_KEY: Final = (
    "INSERT INTO idempotency_keys (route, idem_key, fingerprint, run_id, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (route, idem_key) DO NOTHING"
)

# A keyed creation's first statement: the key, or nothing when it is taken.
CLAIM_KEY: Final = _INSERT_KEY + " RETURNING run_id"
FIND_KEY: Final = (
    "SELECT fingerprint, run_id FROM idempotency_keys WHERE route = ? AND idem_key = ?"
)

# Due runs first: no wake time (run now), then the earliest wake, then the oldest;
# run_id only makes the order total, so pages never depend on how ties fall.
CLAIM: Final = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE {ACTIVE} AND {{which}}"
    " ORDER BY wake_at NULLS FIRST, created_at, run_id LIMIT ?"
)
# What claiming sets on each run it takes (see `claim_updates`).
CLAIM_LEASE: Final = "owner = ?, lease_until = ?"
EXPIRED: Final = "(lease_until IS NULL OR lease_until < ?)"
# Stealing takes live leases too, except this owner's own: it is running those already.
NOT_MINE: Final = "(lease_until IS NULL OR lease_until < ? OR owner IS NOT ?)"

# Suspended runs hold no lease, paused ones need none: both stay out of the lease index.
RENEW: Final = f"UPDATE runs SET lease_until = ? WHERE owner = ? AND {ACTIVE}"
RELEASE: Final = f"UPDATE runs SET lease_until = NULL WHERE owner = ? AND {ACTIVE}"

# Named: with no statistics the planner reads every finished run through the status
# listing index and sorts them, instead of a range of runs_finished.
_FINISHED_BEFORE: Final = (
    "SELECT run_id FROM runs INDEXED BY runs_finished WHERE finished_at < ?"
    f" AND status IN ({', '.join(repr(str(s)) for s in sorted(FINAL_STATUSES))}){{also}}"
    " ORDER BY finished_at LIMIT ?"
)
PURGEABLE: Final = _FINISHED_BEFORE.format(also="")
# A streamed body can be a thousand large rows, each costly to delete (SQLite walks its
# overflow pages): a purge deletes at most `limit` chunks of the runs it would take,
# and takes only runs with none left, so a transaction stays short whatever the bodies.
PURGE_CHUNKS: Final = (
    "DELETE FROM body_chunks WHERE rowid IN (SELECT rowid FROM body_chunks"
    f" WHERE run_id IN ({PURGEABLE}) LIMIT ?)"
)
PURGEABLE_UNCHUNKED: Final = _FINISHED_BEFORE.format(
    also=" AND NOT EXISTS (SELECT 1 FROM body_chunks c WHERE c.run_id = runs.run_id)"
)
# Dependents first; the run row goes last, so no key or step ever outlives its run.
PURGE: Final = (
    "DELETE FROM idempotency_keys WHERE run_id = ?",
    "DELETE FROM steps WHERE run_id = ?",
    "DELETE FROM attempts WHERE run_id = ?",
    "DELETE FROM step_errors WHERE run_id = ?",
    "DELETE FROM pending WHERE run_id = ?",
    "DELETE FROM bodies WHERE run_id = ?",
    "DELETE FROM runs WHERE run_id = ?",
)
# Oldest first through events_ts; rowids, so the delete needs no second key lookup.
PURGE_EVENTS: Final = (
    "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE ts < ? ORDER BY ts LIMIT ?)"
)


# The size is the end of the last chunk: found through the primary key, and length()
# of a blob reads its size, not its bytes.
GET_BODY: Final = (
    "SELECT epoch, attempt, status, headers, coalesce((SELECT pos + length(data)"
    " FROM body_chunks WHERE run_id = ?1 ORDER BY pos DESC LIMIT 1), 0)"
    " FROM bodies WHERE run_id = ?1"
)
# One range of the primary key: from the chunk holding the offset (the greatest pos at
# or before it) up to the last chunk starting before offset + limit, so a read gathers
# at most `limit` bytes plus the cut-off head of its first chunk.
READ_BODY: Final = (
    "SELECT pos, data FROM body_chunks WHERE run_id = ?1 AND pos >= coalesce("
    "(SELECT max(pos) FROM body_chunks WHERE run_id = ?1 AND pos <= ?2), ?2)"
    " AND pos < ?2 + ?3 ORDER BY pos"
)


# A run whose first attempt was folded into its row (`folds_attempt`) has no attempt
# row; that attempt is read back from the run, from its creation to its end.
LIST_ATTEMPTS: Final = (
    "SELECT attempt, started_at, ended_at, outcome, status, detail FROM attempts"
    " WHERE run_id = ?1"
    " UNION ALL SELECT 1, created_at, finished_at, 'response', resp_status, NULL FROM runs"
    f" WHERE run_id = ?1 AND status = '{RunStatus.SUCCEEDED}' AND attempt = 1"
    " AND NOT EXISTS (SELECT 1 FROM attempts WHERE run_id = ?1)"
    " ORDER BY 1"
)


# SQLite's default cap on parameters in one statement since 3.32 (999 before).
_MAX_PARAMS: Final = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
# Enough rows to make a statement's per-call costs vanish, few enough to keep each
# statement's text and parameter list small.
MAX_ROWS: Final = 500
_VALUES: Final = re.compile(r"VALUES (\([?, ]+\))")


def multi_row(sql: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """One statement for many rows where SQL allows it, as (statement, [flat params]).

    Why: the sqlite3 module releases and retakes the GIL around every row it steps,
    and under a busy event loop each retake waits up to the switch interval (5 ms),
    so `executemany` of 2,000 rows can take seconds. `INSERT … VALUES (…), (…)` and
    `DELETE … WHERE run_id IN (…)` step once per statement. Rows keep their order,
    so an upsert or `DO NOTHING` sees the rows as `executemany` would.
    """
    if len(rows) < 2:
        return [(sql, rows)]
    width = len(rows[0])
    values = _VALUES.search(sql)
    if values is not None:
        head, one, tail = sql[: values.start(1)], values.group(1), sql[values.end(1) :]
    elif sql.endswith("WHERE run_id = ?") and width == 1:
        head, one, tail = sql[: -len("= ?")] + "IN (", "?", ")"
    else:
        return [(sql, rows)]
    per = max(1, min(MAX_ROWS, _MAX_PARAMS // width))
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        flat = tuple(itertools.chain.from_iterable(chunk))
        out.append((head + ", ".join([one] * len(chunk)) + tail, [flat]))
    return out


def claim_updates(
    assign: str, values: tuple[Any, ...], run_ids: Sequence[str]
) -> list[tuple[str, tuple[Any, ...]]]:
    """`UPDATE runs SET <assign> WHERE run_id IN (…)` for claimed runs, as (statement,
    params) pairs of at most MAX_ROWS ids each.

    A claim gives every run it takes the same values, so `multi_row`'s `IN (…)` rewrite
    of `WHERE run_id = ?` does what `executemany` did per row, without stepping SQLite
    (and the GIL) per run. `values` fill `assign`'s placeholders, the chunk's ids follow.
    """
    sql = f"UPDATE runs SET {assign} WHERE run_id = ?"
    return [
        (statement, values + ids)
        for statement, chunks in multi_row(sql, [(run_id,) for run_id in run_ids])
        for ids in chunks
    ]


def plan(writes: Sequence[Write]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The batch as (statement, parameter rows) pairs, one executemany each, in order."""
    pairs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for group in group_writes(coalesce(writes)):
        kind = type(group[0])
        pairs += multi_row(_SQL[kind], [params(w) for w in group])
        for sql, also in _ALSO.get(kind, ()):
            pairs += multi_row(sql, [also(w) for w in group])
        if kind is not CreateRun and kind is not CreatedFinished:
            continue  # only a run's creation carries an idempotency key
        keys = key_params(group)
        if keys:
            pairs += multi_row(_INSERT_KEY, keys)
    return pairs
