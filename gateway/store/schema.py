"""Versioned DDL for both dialects (SQLite now, PostgreSQL for the shared-store mode).

Holds table shapes and the migration plan only (each dialect applies it); never holds
the queries used at runtime (each dialect owns those). A released migration is never
edited: add one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.errors import StoreUnavailable
from gateway.store.records import FINAL_STATUSES, RunStatus


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: the same change written once per dialect, one statement each."""

    version: int
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# `meta` carries the schema version itself, so it exists before any versioned step runs.
SQLITE_META: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
)
POSTGRES_META: Final = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
VERSION_KEY: Final = "schema_version"

# Times are Unix seconds as floats, like the records in `gateway.store`. Headers are
# orjson arrays of [name, value] pairs, so order and repeated names survive a restart.
# Plain CREATE (no IF NOT EXISTS): a migration that ran twice must fail loudly.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        version=1,
        sqlite=(
            # A rowid table: request and response bodies make rows large, which is what
            # WITHOUT ROWID handles worst.
            """CREATE TABLE runs (
                run_id TEXT PRIMARY KEY,
                route TEXT NOT NULL,
                status TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                finished_at REAL,
                wake_at REAL,
                method TEXT NOT NULL,
                path_qs TEXT NOT NULL,
                req_headers BLOB NOT NULL,
                req_body BLOB NOT NULL,
                resp_status INTEGER,
                resp_headers BLOB,
                resp_body BLOB
            )""",
            # Rowid tables, although the keys are composite: run ids are random, so a
            # clustered (WITHOUT ROWID) b-tree takes every insert at a random spot and
            # splits pages; measured on 20k interleaved step inserts, it was 1.5-2.5x
            # slower to write at 100 B-20 KB outputs and no faster to read past 100 B.
            """CREATE TABLE steps (
                run_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                output BLOB NOT NULL,
                attempt INTEGER NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (run_id, step_id)
            )""",
            """CREATE TABLE attempts (
                run_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                started_at REAL NOT NULL,
                ended_at REAL NOT NULL,
                outcome TEXT NOT NULL,
                status INTEGER,
                detail TEXT,
                PRIMARY KEY (run_id, attempt)
            )""",
            # Timers due, retention purge, admin listing by route.
            "CREATE INDEX runs_status_wake ON runs (status, wake_at)",
            "CREATE INDEX runs_finished ON runs (finished_at)",
            "CREATE INDEX runs_route_created ON runs (route, created_at)",
        ),
        postgres=(
            """CREATE TABLE runs (
                run_id TEXT PRIMARY KEY,
                route TEXT NOT NULL,
                status TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION,
                wake_at DOUBLE PRECISION,
                method TEXT NOT NULL,
                path_qs TEXT NOT NULL,
                req_headers BYTEA NOT NULL,
                req_body BYTEA NOT NULL,
                resp_status INTEGER,
                resp_headers BYTEA,
                resp_body BYTEA
            )""",
            """CREATE TABLE steps (
                run_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                output BYTEA NOT NULL,
                attempt INTEGER NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (run_id, step_id)
            )""",
            """CREATE TABLE attempts (
                run_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION NOT NULL,
                outcome TEXT NOT NULL,
                status INTEGER,
                detail TEXT,
                PRIMARY KEY (run_id, attempt)
            )""",
            "CREATE INDEX runs_status_wake ON runs (status, wake_at)",
            "CREATE INDEX runs_finished ON runs (finished_at)",
            "CREATE INDEX runs_route_created ON runs (route, created_at)",
        ),
    ),
    # Leases and idempotency keys. The lease index holds unfinished runs only, so claims
    # and renewals scan a few rows however many finished runs retention keeps (version 3
    # replaces it with one that leaves parked runs out too).
    Migration(
        version=2,
        sqlite=(
            "ALTER TABLE runs ADD COLUMN owner TEXT",
            "ALTER TABLE runs ADD COLUMN lease_until REAL",
            "CREATE INDEX runs_unfinished_lease ON runs (lease_until, owner)"
            " WHERE status NOT IN ('succeeded', 'failed', 'cancelled')",
            # Small rows looked up by their key: WITHOUT ROWID stores each once.
            """CREATE TABLE idempotency_keys (
                route TEXT NOT NULL,
                idem_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                run_id TEXT NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (route, idem_key)
            ) WITHOUT ROWID""",
            "CREATE INDEX idempotency_keys_run ON idempotency_keys (run_id)",
        ),
        postgres=(
            "ALTER TABLE runs ADD COLUMN owner TEXT",
            "ALTER TABLE runs ADD COLUMN lease_until DOUBLE PRECISION",
            "CREATE INDEX runs_unfinished_lease ON runs (lease_until, owner)"
            " WHERE status NOT IN ('succeeded', 'failed', 'cancelled')",
            """CREATE TABLE idempotency_keys (
                route TEXT NOT NULL,
                idem_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                run_id TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (route, idem_key)
            )""",
            "CREATE INDEX idempotency_keys_run ON idempotency_keys (run_id)",
        ),
    ),
    # Durable sleep, event waits, events, the admin listing. Parked runs (suspended,
    # paused) leave the lease index, so claims and renewals cost nothing per timer;
    # suspended runs get their own index on wake time instead. The listing indexes end
    # in run_id so keyset pages need no sort; SQLite's also carry resp_status, which it
    # then reads from the index: in the row it sits after req_body, and reading it
    # there walks the body's overflow pages (measured: 2 MB bodies made a page of 100
    # runs 80x slower). PostgreSQL keeps bodies out of line (TOAST), so it needs no copy.
    Migration(
        version=3,
        sqlite=(
            # One small row per sleep or wait a run is parked on, found by its key.
            """CREATE TABLE pending (
                run_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                wake_at REAL,
                event TEXT,
                match BLOB,
                created_at REAL NOT NULL,
                PRIMARY KEY (run_id, step_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX pending_wait ON pending (kind, event, created_at)",
            # A rowid table: event data can be large.
            """CREATE TABLE events (
                event_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                data BLOB NOT NULL,
                ts REAL NOT NULL
            )""",
            "CREATE INDEX events_name_ts ON events (name, ts)",
            "CREATE INDEX events_ts ON events (ts)",
            "DROP INDEX runs_status_wake",
            "DROP INDEX runs_route_created",
            "DROP INDEX runs_unfinished_lease",
            "CREATE INDEX runs_active_lease ON runs (lease_until, owner)"
            " WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'suspended', 'paused')",
            # status, though fixed by the predicate: without it SQLite reads the rows
            # to count them, as if the index did not cover the query.
            "CREATE INDEX runs_suspended_wake ON runs (wake_at, status) WHERE status = 'suspended'",
            "CREATE INDEX runs_list ON runs (created_at, run_id, resp_status)",
            "CREATE INDEX runs_list_route ON runs (route, created_at, run_id, resp_status)",
            "CREATE INDEX runs_list_status ON runs (status, created_at, run_id, resp_status)",
        ),
        postgres=(
            """CREATE TABLE pending (
                run_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                wake_at DOUBLE PRECISION,
                event TEXT,
                match BYTEA,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (run_id, step_id)
            )""",
            "CREATE INDEX pending_wait ON pending (kind, event, created_at)",
            """CREATE TABLE events (
                event_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                data BYTEA NOT NULL,
                ts DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX events_name_ts ON events (name, ts)",
            "CREATE INDEX events_ts ON events (ts)",
            "DROP INDEX runs_status_wake",
            "DROP INDEX runs_route_created",
            "DROP INDEX runs_unfinished_lease",
            "CREATE INDEX runs_active_lease ON runs (lease_until, owner)"
            " WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'suspended', 'paused')",
            "CREATE INDEX runs_suspended_wake ON runs (wake_at) WHERE status = 'suspended'",
            "CREATE INDEX runs_list ON runs (created_at, run_id)",
            "CREATE INDEX runs_list_route ON runs (route, created_at, run_id)",
            "CREATE INDEX runs_list_status ON runs (status, created_at, run_id)",
        ),
    ),
    # Event waits indexed by their match (`gateway.store.match_keys`): `paths` is the
    # JSON array of a wait's sorted match paths, `match` its canonical JSON, so an event
    # finds the waits it fits by equality, one lookup per distinct path list of its name.
    # The index leads with kind, as pending_wait did, so counting by kind stays
    # index-only. Existing waits get their paths here, except those whose match holds a
    # real number: those bytes may not be canonical (1.0 for 1), so they keep a NULL
    # path list and are matched one by one, as before.
    Migration(
        version=4,
        sqlite=(
            "ALTER TABLE pending ADD COLUMN paths TEXT",
            "UPDATE pending SET match = X'7B7D' WHERE kind = 'wait' AND match IS NULL",
            """UPDATE pending SET paths = (
                SELECT json_group_array(key) FROM (
                    SELECT key FROM json_each(CAST(pending.match AS TEXT)) ORDER BY key
                )
            ) WHERE kind = 'wait' AND json_valid(CAST(match AS TEXT))
            AND json_type(CAST(match AS TEXT)) = 'object'
            AND NOT EXISTS (
                SELECT 1 FROM json_tree(CAST(pending.match AS TEXT)) WHERE type = 'real'
            )""",
            "DROP INDEX pending_wait",
            "CREATE INDEX pending_match ON pending (kind, event, paths, match)",
        ),
        # jsonb keeps a number's text, but telling 1.0 from 1 in it is not worth it:
        # waits with any number stay unindexed. Not run yet (no PostgreSQL dialect);
        # its index entries are bounded in size, so it may have to key on a hash.
        postgres=(
            "ALTER TABLE pending ADD COLUMN paths TEXT",
            "UPDATE pending SET match = '\\x7b7d'::bytea WHERE kind = 'wait' AND match IS NULL",
            """UPDATE pending SET paths = (
                SELECT json_agg(k ORDER BY k)::text
                FROM jsonb_object_keys(convert_from(match, 'UTF8')::jsonb) AS k
            ) WHERE kind = 'wait' AND NOT jsonb_path_exists(
                convert_from(match, 'UTF8')::jsonb, 'lax $.** ? (@.type() == "number")'
            )""",
            "DROP INDEX pending_wait",
            "CREATE INDEX pending_match ON pending (kind, event, paths, match)",
        ),
    ),
    # Failed tries of steps that backends report. `seq` numbers a run's kept errors from
    # 0; the store keeps STEP_ERRORS_KEPT of them and counts later ones in the last kept
    # row's `dropped`, so a run's errors are a few rows however often a backend fails.
    # A rowid table, like steps: messages make rows too large for WITHOUT ROWID.
    Migration(
        version=5,
        sqlite=(
            """CREATE TABLE step_errors (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                step_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                message TEXT NOT NULL,
                created_at REAL NOT NULL,
                dropped INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (run_id, seq)
            )""",
        ),
        postgres=(
            """CREATE TABLE step_errors (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                step_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                message TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                dropped BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (run_id, seq)
            )""",
        ),
    ),
    # Streamed response bodies, never held whole: `bodies` holds a run's streamed head
    # (one row, replaced when a retry diverges: a new epoch), `body_chunks` its bytes, one
    # row per chunk keyed by its byte offset `pos` (`offset` is reserved in PostgreSQL),
    # so a read from any offset is one range of the primary key. `resp_kept` on the run
    # says its result is that body: its length, or -1 when it was too large to keep;
    # NULL when the result's body is inline in `resp_body`.
    Migration(
        version=6,
        sqlite=(
            "ALTER TABLE runs ADD COLUMN resp_kept INTEGER",
            """CREATE TABLE bodies (
                run_id TEXT PRIMARY KEY,
                epoch INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                status INTEGER NOT NULL,
                headers BLOB NOT NULL
            )""",
            # A rowid table, like steps: chunks are large rows at random run ids.
            """CREATE TABLE body_chunks (
                run_id TEXT NOT NULL,
                pos INTEGER NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (run_id, pos)
            )""",
        ),
        postgres=(
            "ALTER TABLE runs ADD COLUMN resp_kept BIGINT",
            """CREATE TABLE bodies (
                run_id TEXT PRIMARY KEY,
                epoch BIGINT NOT NULL,
                attempt INTEGER NOT NULL,
                status INTEGER NOT NULL,
                headers BYTEA NOT NULL
            )""",
            """CREATE TABLE body_chunks (
                run_id TEXT NOT NULL,
                pos BIGINT NOT NULL,
                data BYTEA NOT NULL,
                PRIMARY KEY (run_id, pos)
            )""",
        ),
    ),
    # Tracing: a step's timing as its backend reported it (NULL when it sent none), and
    # what a run is suspended on, so a node that resumes it can close its suspension
    # span. Nullable columns at the end: adding them rewrites no row in either dialect.
    Migration(
        version=7,
        sqlite=(
            "ALTER TABLE steps ADD COLUMN started_at REAL",
            "ALTER TABLE steps ADD COLUMN duration_ms REAL",
            "ALTER TABLE runs ADD COLUMN suspended_on TEXT",
            "ALTER TABLE runs ADD COLUMN suspended_at REAL",
        ),
        postgres=(
            "ALTER TABLE steps ADD COLUMN started_at DOUBLE PRECISION",
            "ALTER TABLE steps ADD COLUMN duration_ms DOUBLE PRECISION",
            "ALTER TABLE runs ADD COLUMN suspended_on TEXT",
            "ALTER TABLE runs ADD COLUMN suspended_at DOUBLE PRECISION",
        ),
    ),
)


def _sql(statuses: Sequence[RunStatus]) -> str:
    return ", ".join(f"'{status}'" for status in statuses)


_FINAL_IN_ORDER: Final = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
assert set(_FINAL_IN_ORDER) == FINAL_STATUSES

UNFINISHED: Final = f"status NOT IN ({_sql(_FINAL_IN_ORDER)})"
"""The SQL test for an unfinished run (retention keeps it)."""

ACTIVE: Final = f"status NOT IN ({_sql((*_FINAL_IN_ORDER, RunStatus.SUSPENDED, RunStatus.PAUSED))})"
"""An unfinished run that is not parked: leases, claims and renewals are about these.
The same text as the lease index's predicate, which SQLite needs to use the index
(tests/store/test_contract.py checks they agree)."""

SUSPENDED: Final = f"status = '{RunStatus.SUSPENDED}'"
"""The same text as the wake index's predicate."""

LATEST: Final = MIGRATIONS[-1].version


def pending(current: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The steps a database at version `current` still needs, in order.

    Refuses a database newer than this code: running old code against a newer schema
    would silently misread it.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError(f"migration versions must be unique, increasing and >= 1: {versions}")
    latest = versions[-1] if versions else 0
    if current > latest:
        raise StoreUnavailable(
            f"database schema version {current} is newer than this gateway's ({latest})"
        )
    return [m for m in migrations if m.version > current]
