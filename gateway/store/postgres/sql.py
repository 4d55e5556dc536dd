"""PostgreSQL statements for the store's writes and reads, and how a batch becomes them.

Pure: builds statements, never touches a connection. Each write kind's statement is
written once as a template and comes in two forms: one row per execution (executemany),
or a whole group in one execution over `unnest` arrays. `ARRAYS` names the kinds that
take the second, chosen by measurement (`python -m bench.pg_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement template over named, typed parameters.

    `text` holds `{name}` for each parameter and `{rows}` where the form differs: for an
    INSERT its VALUES list or `SELECT * FROM unnest(…)`; for an UPDATE or DELETE nothing
    or the `FROM` / `USING unnest(…) AS v(…)` the parameters come from. Parameters are
    bound in `names` order (`rows.params` order). Columns of the table stay unqualified;
    an array parameter reads `v.p_<name>`, so a guard never meets an ambiguous name.
    `key`: parameters no two rows of one array execution may share (an upsert or an
    UPDATE may touch a row only once per statement).
    """

    text: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    verb: str
    key: tuple[str, ...] = ()

    def one_row(self) -> str:
        marks = {name: f"${i}" for i, name in enumerate(self.names, 1)}
        rows = "VALUES (" + ", ".join(marks.values()) + ")" if self.verb == "INSERT" else ""
        return self.text.format(rows=rows, **marks)

    def arrays(self) -> str:
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(self.types, 1))
        if self.verb == "INSERT":
            return self.text.format(rows=f"SELECT * FROM unnest({arrays})")
        alias = ", ".join(f"p_{name}" for name in self.names)
        join = "FROM" if self.verb == "UPDATE" else "USING"
        marks = {name: f"v.p_{name}" for name in self.names}
        return self.text.format(rows=f"{join} unnest({arrays}) AS v({alias})", **marks)


def _columns(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`"run_id text, attempt int4"` → (names, types)."""
    pairs = [part.split() for part in spec.split(",")]
    return tuple(name for name, _ in pairs), tuple(kind for _, kind in pairs)


def _insert(table: str, spec: str, conflict: str, key: str = "") -> Statement:
    names, types = _columns(spec)
    text = f"INSERT INTO {table} ({', '.join(names)}) {{rows}} {conflict}"
    return Statement(text, names, types, "INSERT", tuple(key.split()))


def _update(spec: str, also: str = "", guard: str = "") -> Statement:
    """An UPDATE of runs setting each column of `spec` but the last (run_id, the key),
    then the fixed assignments `also`, on the run if `guard` (SQL on runs' columns) holds.
    Add a guard's own parameters to `spec` after run_id, and to `rows.params`."""
    names, types = _columns(spec)
    sets = [f"{name} = {{{name}}}" for name in names[: names.index("run_id")]]
    where = " AND ".join(["run_id = {run_id}", *([guard] if guard else [])])
    text = f"UPDATE runs SET {', '.join(sets + ([also] if also else []))} {{rows}} WHERE {where}"
    return Statement(text, names, types, "UPDATE", ("run_id",))


def _delete(table: str, where: str = "run_id = {run_id}", spec: str = "run_id text") -> Statement:
    names, types = _columns(spec)
    return Statement(f"DELETE FROM {table} {{rows}} WHERE {where}", names, types, "DELETE")


_RUN: Final = (
    "run_id text, route text, status text, attempt int4, created_at float8,"
    " updated_at float8, {middle} method text, path_qs text, req_headers bytea, req_body bytea"
)
_RESPONSE: Final = "resp_status int4, resp_headers bytea, resp_body bytea, resp_kept int8"
_CLEARED: Final = "wake_at = NULL, owner = NULL, lease_until = NULL"
_FINISH: Final = f"status text, {_RESPONSE}, finished_at float8, updated_at float8, run_id text"

# One template per kind of write. Parameters come from `rows.params` in the same order.
STATEMENTS: Final[dict[type[Any], Statement]] = {
    CreateRun: _insert(
        "runs",
        _RUN.format(middle="") + ", owner text, lease_until float8",
        "ON CONFLICT (run_id) DO NOTHING",
    ),
    CreatedFinished: _insert(
        "runs",
        _RUN.format(middle="finished_at float8,") + ", " + _RESPONSE,
        "ON CONFLICT (run_id) DO NOTHING",
    ),
    PutStep: _insert(
        "steps",
        "run_id text, step_id text, output bytea, attempt int4, created_at float8,"
        " started_at float8, duration_ms float8",
        "ON CONFLICT (run_id, step_id) DO NOTHING",
    ),
    RecordAttempt: _insert(
        "attempts",
        "run_id text, attempt int4, started_at float8, ended_at float8, outcome text,"
        " status int4, detail text",
        "ON CONFLICT (run_id, attempt) DO UPDATE SET started_at = excluded.started_at,"
        " ended_at = excluded.ended_at, outcome = excluded.outcome,"
        " status = excluded.status, detail = excluded.detail",
        key="run_id attempt",
    ),
    # Guarded, as a node's stale write may land after another node finished the run
    # (fencing stops the node first; this keeps a write queued before it noticed out).
    UpdateRun: _update(
        "status text, attempt int4, wake_at float8, updated_at float8, run_id text",
        also="suspended_on = NULL, suspended_at = NULL",
        guard=f"runs.{UNFINISHED}",
    ),
    FinishRun: _update(_FINISH, also=_CLEARED, guard=f"runs.{UNFINISHED}"),
    ReplaceResult: _update(_FINISH, also=_CLEARED),
    # Guarded: a suspension that lost a race with a final write must not revive the run.
    SuspendRun: _update(
        "attempt int4, wake_at float8, updated_at float8, suspended_on text,"
        " suspended_at float8, run_id text",
        also=f"status = '{RunStatus.SUSPENDED}', owner = NULL, lease_until = NULL",
        guard=UNFINISHED,
    ),
    # Guarded: a run that finished first keeps its real result.
    CancelRun: _update(
        f"{_RESPONSE}, finished_at float8, updated_at float8, run_id text",
        also=f"status = '{RunStatus.CANCELLED}', {_CLEARED}",
        guard=UNFINISHED,
    ),
    ResetRun: _update(
        "attempt int4, updated_at float8, owner text, lease_until float8, run_id text",
        also=f"status = '{RunStatus.RUNNING}', finished_at = NULL, resp_status = NULL,"
        " resp_headers = NULL, resp_body = NULL, resp_kept = NULL, wake_at = NULL",
    ),
    # A wait's match goes in canonical, with its path list: the match index's key.
    PutPending: _insert(
        "pending",
        "run_id text, step_id text, kind text, wake_at float8, event text, match bytea,"
        " created_at float8, paths text",
        "ON CONFLICT (run_id, step_id) DO NOTHING",
    ),
    # A NULL step id matches every step of the run.
    DropPending: _delete(
        "pending",
        "run_id = {run_id} AND step_id = coalesce({step_id}, step_id)",
        "run_id text, step_id text",
    ),
    # A new head (and epoch) replaces the old; its chunks are cut by `_ALSO`.
    BeginBody: _insert(
        "bodies",
        "run_id text, epoch int8, attempt int4, status int4, headers bytea",
        "ON CONFLICT (run_id) DO UPDATE SET epoch = excluded.epoch,"
        " attempt = excluded.attempt, status = excluded.status, headers = excluded.headers",
        key="run_id",
    ),
    # A chunk already at its offset stays (a retry re-sending the same bytes).
    AppendBody: _insert(
        "body_chunks",
        "run_id text, pos int8, data bytea",
        "ON CONFLICT (run_id, pos) DO NOTHING",
    ),
}

# The next free seq of the run, up to the last kept one: once that is taken, the
# conflict counts the error in its row instead (see the schema's version 5). Reads the
# table it writes, so one row per execution: never in array form.
RECORD_STEP_ERROR: Final = (
    "INSERT INTO step_errors (run_id, seq, step_id, attempt, message, created_at)"
    f" SELECT $1, least(count(*), {STEP_ERRORS_KEPT - 1}), $2, $3, $4, $5 FROM step_errors"
    " WHERE run_id = $1 ON CONFLICT (run_id, seq) DO UPDATE SET dropped = step_errors.dropped + 1"
)

_Params = Callable[[Write | CreatedFinished], tuple[Any, ...]]

# Only a run that this CancelRun (or an earlier one) cancelled: a finished run's
# streamed body is its result, and CancelRun leaves finished runs alone.
_IF_CANCELLED: Final = (
    "run_id = {run_id} AND EXISTS (SELECT 1 FROM runs AS r"
    f" WHERE r.run_id = {{run_id}} AND r.status = '{RunStatus.CANCELLED}')"
)
_DROP_BODY: Final = (_delete("body_chunks"), _delete("bodies"))
# Run after their kind's statement, in order, each with its rows built per write: a run
# that ends leaves no pending sleep or wait behind; a cancelled or reset run no body.
_ALSO: Final[dict[type[Any], tuple[tuple[Statement, _Params], ...]]] = {
    FinishRun: ((_delete("pending"), by_run),),
    ReplaceResult: ((_delete("pending"), by_run),),
    CancelRun: (
        (_delete("pending"), by_run),
        (_delete("body_chunks", _IF_CANCELLED), by_run),
        (_delete("bodies", _IF_CANCELLED), by_run),
    ),
    ResetRun: tuple((statement, by_run) for statement in _DROP_BODY),
    # Keep the first `keep` bytes: drop the chunks from there, then cut the one that
    # straddles it.
    BeginBody: (
        (
            _delete("body_chunks", "run_id = {run_id} AND pos >= {keep}", "run_id text, keep int8"),
            with_keep,
        ),
        (
            Statement(
                "UPDATE body_chunks SET data = substring(data FROM 1 FOR ({keep} - pos)::int4)"
                " {rows} WHERE run_id = {run_id} AND pos = (SELECT max(c.pos) FROM body_chunks"
                " AS c WHERE c.run_id = {run_id} AND c.pos < {keep})"
                " AND pos + octet_length(data) > {keep}",
                ("run_id", "keep"),
                ("text", "int8"),
                "UPDATE",
            ),
            with_keep,
        ),
    ),
}

# Written with its CreateRun, after it; the first key on a route wins.
INSERT_KEY: Final = _insert(
    "idempotency_keys",
    "route text, idem_key text, fingerprint text, run_id text, created_at float8",
    "ON CONFLICT (route, idem_key) DO NOTHING",
)

# A keyed creation's first statement: the key, or nothing when it is taken.
CLAIM_KEY: Final = (
    "INSERT INTO idempotency_keys (route, idem_key, fingerprint, run_id, created_at)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (route, idem_key) DO NOTHING RETURNING run_id"
)

# Measured (bench/pg_batch.py, batches of 1, 50 and 500 on this 2-core machine): one
# unnest statement commits narrow rows 10-35% faster than executemany at 50-500 writes
# and costs about as much client CPU; for rows of large byte values (run creations with
# their request, body chunks) it costs up to twice the CPU per write for at most 15%
# more writes/s, or fewer, so those stay executemany. At one write both are one execute.
ARRAYS: Final = frozenset({PutStep, RecordAttempt, UpdateRun, FinishRun})
"""Kinds whose groups go in one execution over arrays; the others, one executemany."""

Step = tuple[str, list[tuple[Any, ...]]]
"""A statement and its parameter rows: one row, an execute; several, an executemany."""


def _chunks(rows: list[tuple[Any, ...]], key: Sequence[int]) -> list[list[tuple[Any, ...]]]:
    """Split rows, in order, so no two rows of one chunk share a key."""
    if not key:
        return [rows]
    chunks: list[list[tuple[Any, ...]]] = [[]]
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        ident = tuple(row[i] for i in key)
        if ident in seen:
            chunks.append([])
            seen.clear()
        seen.add(ident)
        chunks[-1].append(row)
    return chunks


def steps_for(statement: Statement, rows: list[tuple[Any, ...]], arrays: bool) -> list[Step]:
    """The executions that apply `rows` with `statement`, in order."""
    if not arrays or len(rows) < 2 or "{rows}" not in statement.text:
        return [(statement.one_row(), rows)]
    key = [statement.names.index(name) for name in statement.key]
    sql = statement.arrays()
    return [(sql, [tuple(map(list, zip(*chunk, strict=True)))]) for chunk in _chunks(rows, key)]


def plan(writes: Sequence[Write], arrays: frozenset[type[Any]] = ARRAYS) -> list[Step]:
    """The batch as (statement, parameter rows) pairs, in order: one execution each for
    the kinds in `arrays`, an executemany each for the others."""
    out: list[Step] = []
    for group in group_writes(coalesce(writes)):
        kind = type(group[0])
        rows = [params(w) for w in group]
        if kind is RecordStepError:
            out.append((RECORD_STEP_ERROR, rows))
            continue
        together = kind in arrays
        out += steps_for(STATEMENTS[kind], rows, together)
        for statement, also in _ALSO.get(kind, ()):
            out += steps_for(statement, [also(w) for w in group], together)
        if kind is CreateRun or kind is CreatedFinished:
            keys = key_params(group)
            if keys:
                out += steps_for(INSERT_KEY, keys, together)
    return out


# Due runs first: no wake time (run now), then the earliest wake, then the oldest;
# run_id only makes the order total. SKIP LOCKED: a run another node is claiming is
# not waited for, it is that node's.
CLAIM: Final = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE {ACTIVE} AND {{which}}"
    " ORDER BY wake_at NULLS FIRST, created_at, run_id LIMIT {limit} FOR UPDATE SKIP LOCKED"
)
EXPIRED: Final = "(lease_until IS NULL OR lease_until < $1)"
# Stealing takes live leases too, except this owner's own: it is running those already.
NOT_MINE: Final = "(lease_until IS NULL OR lease_until < $1 OR owner IS DISTINCT FROM $2)"
CLAIM_LEASE: Final = "UPDATE runs SET owner = $1, lease_until = $2 WHERE run_id = ANY($3::text[])"

RENEW: Final = f"UPDATE runs SET lease_until = $1 WHERE owner = $2 AND {ACTIVE}"
RELEASE: Final = f"UPDATE runs SET lease_until = NULL WHERE owner = $1 AND {ACTIVE}"

GET_RUN: Final = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"
# The size is the end of the last chunk, found through the primary key; octet_length
# reads a stored value's size from its header, not its bytes.
GET_BODY: Final = (
    "SELECT epoch, attempt, status, headers, coalesce((SELECT pos + octet_length(data)"
    " FROM body_chunks WHERE run_id = $1 ORDER BY pos DESC LIMIT 1), 0)"
    " FROM bodies WHERE run_id = $1"
)
# One range of the primary key, from the chunk holding the offset to the last chunk
# starting before offset + limit.
READ_BODY: Final = (
    "SELECT pos, data FROM body_chunks WHERE run_id = $1 AND pos >= coalesce("
    "(SELECT max(pos) FROM body_chunks WHERE run_id = $1 AND pos <= $2::int8), $2::int8)"
    " AND pos < $2::int8 + $3::int8 ORDER BY pos"
)
LOAD_STEPS: Final = "SELECT step_id, output FROM steps WHERE run_id = $1"
# A run whose first attempt was folded into its row (`batch.folds_attempt`) has no
# attempt row; that attempt is read back from the run, from its creation to its end.
LIST_ATTEMPTS: Final = (
    "SELECT attempt, started_at, ended_at, outcome, status, detail FROM attempts"
    " WHERE run_id = $1"
    " UNION ALL SELECT 1, created_at, finished_at, 'response', resp_status, NULL FROM runs"
    f" WHERE run_id = $1 AND status = '{RunStatus.SUCCEEDED}' AND attempt = 1"
    " AND NOT EXISTS (SELECT 1 FROM attempts WHERE run_id = $1)"
    " ORDER BY 1"
)
FIND_KEY: Final = (
    "SELECT fingerprint, run_id FROM idempotency_keys WHERE route = $1 AND idem_key = $2"
)
GET_META: Final = "SELECT value FROM meta WHERE key = $1"
INSERT_META: Final = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"

_FINISHED_BEFORE: Final = (
    "SELECT run_id FROM runs WHERE finished_at < $1"
    f" AND status IN ({', '.join(repr(str(s)) for s in sorted(FINAL_STATUSES))}){{also}}"
    " ORDER BY finished_at LIMIT $2"
)
PURGEABLE: Final = _FINISHED_BEFORE.format(also="")
# At most `limit` chunks of the runs a purge would take, then only runs with none left,
# so a transaction stays short whatever the bodies (as on SQLite). SKIP LOCKED: two
# nodes purging at once split the work instead of queueing on the same rows.
PURGE_CHUNKS: Final = (
    "DELETE FROM body_chunks WHERE (run_id, pos) IN (SELECT run_id, pos FROM body_chunks"
    f" WHERE run_id IN ({PURGEABLE}) LIMIT $3)"
)
PURGEABLE_UNCHUNKED: Final = (
    _FINISHED_BEFORE.format(
        also=" AND NOT EXISTS (SELECT 1 FROM body_chunks c WHERE c.run_id = runs.run_id)"
    )
    + " FOR UPDATE SKIP LOCKED"
)
# Dependents first; the run row goes last, so no key or step ever outlives its run.
PURGE: Final = tuple(
    f"DELETE FROM {table} WHERE run_id = ANY($1::text[])"
    for table in (
        "idempotency_keys",
        "steps",
        "attempts",
        "step_errors",
        "pending",
        "bodies",
        "runs",
    )
)
PURGE_EVENTS: Final = (
    "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events WHERE ts < $1"
    " ORDER BY ts LIMIT $2 FOR UPDATE SKIP LOCKED)"
)
