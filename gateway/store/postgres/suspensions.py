"""PostgreSQL side of durable sleep and wait-for-event: due runs, pending rows, events.

Claims due runs with SKIP LOCKED, so a timer fires on one node; never completes one
wait twice (the wait's row is locked from check to write). An event and a suspension
never pass each other unseen: see EVENTS_LOCK.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.store.match_keys import RecordedEvent
from gateway.store.postgres.connection import Connection, PostgresConnections, affected
from gateway.store.records import (
    AddedEvent,
    CompletedWait,
    RunRow,
    RunStatus,
)
from gateway.store.rows import PENDING_COLUMNS, RUN_COLUMNS, leased
from gateway.store.schema import SUSPENDED

EVENTS_LOCK: Final = int.from_bytes(b"dg:event", "big")
"""An advisory lock that `add_event` takes exclusively and a batch suspending a run takes
shared, each for its transaction. Without it, an event could look for waits just before
a suspension commits (and skip the still-live run) and commit just after the run looked
for missed events: neither would see the other. With it, one commits first, whole."""
SHARE_EVENTS_LOCK: Final = "SELECT pg_advisory_xact_lock_shared($1)"

# A live lease is skipped, although a suspension releases it, in case one was set since.
DUE: Final = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE {SUSPENDED} AND wake_at <= $1"
    " AND (lease_until IS NULL OR lease_until < $1) ORDER BY wake_at LIMIT $2"
    " FOR UPDATE SKIP LOCKED"
)
CLAIM_DUE: Final = (
    f"UPDATE runs SET status = '{RunStatus.RUNNING}', wake_at = NULL, owner = $1,"
    " lease_until = $2, updated_at = $3 WHERE run_id = ANY($4::text[])"
)
NEXT_WAKE: Final = f"SELECT min(wake_at) FROM runs WHERE {SUSPENDED}"
COUNT_TIMERS: Final = f"SELECT count(*) FROM runs WHERE {SUSPENDED} AND wake_at IS NOT NULL"
COUNT_SUSPENDS: Final = "SELECT count(*) FROM attempts WHERE run_id = $1 AND outcome = 'suspended'"
COUNT_PENDING: Final = "SELECT kind, count(*) FROM pending GROUP BY kind"
GET_PENDING: Final = f"SELECT {PENDING_COLUMNS} FROM pending WHERE run_id = $1 AND step_id = $2"
LIST_PENDING: Final = (
    f"SELECT {PENDING_COLUMNS} FROM pending WHERE run_id = $1 ORDER BY created_at, step_id"
)
# The next distinct path lists of an event's waits after a cursor, one index seek each
# (a loose index scan: DISTINCT would read every wait of the name); the outer LIMIT
# stops the recursion, which PostgreSQL evaluates only as far as it is read.
PATH_LISTS: Final = (
    "WITH RECURSIVE d (paths) AS ("
    " (SELECT paths FROM pending WHERE kind = 'wait' AND event = $1 AND paths > $2"
    " ORDER BY paths LIMIT 1)"
    " UNION ALL SELECT (SELECT paths FROM pending WHERE kind = 'wait' AND event = $1"
    " AND paths > d.paths ORDER BY paths LIMIT 1) FROM d WHERE d.paths IS NOT NULL"
    ") SELECT paths FROM d WHERE paths IS NOT NULL LIMIT $3"
)
# Open waits of suspended runs behind a key, a keyset page at a time, their rows locked
# so a concurrent `complete_wait` either finished first (the row is gone) or waits. A
# live run's wait is left to its driver, which looks for missed events when it suspends.
_OPEN_WAITS: Final = (
    "SELECT p.run_id, p.step_id, r.attempt, p.match"
    " FROM pending AS p JOIN runs AS r ON r.run_id = p.run_id"
    " WHERE p.kind = 'wait' AND p.event = $1 AND {key} AND ({order}) > ({cursor})"
    " AND r.status = 'suspended' AND NOT EXISTS (SELECT 1 FROM steps AS s"
    " WHERE s.run_id = p.run_id AND s.step_id = p.step_id)"
    " ORDER BY {order} LIMIT {limit} FOR UPDATE OF p"
)
WAITS_BY_KEY: Final = _OPEN_WAITS.format(
    key="p.paths = $2 AND p.match = $3",
    order="p.run_id, p.step_id",
    cursor="$4, $5",
    limit="$6",
)
# Waits the index cannot serve (a NULL path list, see schema version 4), matched one by
# one in Python.
WAITS_UNINDEXED: Final = _OPEN_WAITS.format(
    key="p.paths IS NULL",
    order="p.match, p.run_id, p.step_id",
    cursor="$2, $3, $4",
    limit="$5",
)
# Complete waits in one statement: store each step (at its run's attempt), delete the
# waits, make their runs due at $5. Data-modifying CTEs all see the same snapshot and
# touch different tables, so their order does not matter.
COMPLETE: Final = (
    "WITH w AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int4[])"
    " AS w (run_id, step_id, attempt)),"
    " s AS (INSERT INTO steps (run_id, step_id, output, attempt, created_at)"
    " SELECT run_id, step_id, $4, attempt, $5 FROM w),"
    " d AS (DELETE FROM pending AS p USING w"
    " WHERE p.run_id = w.run_id AND p.step_id = w.step_id)"
    f" UPDATE runs SET wake_at = $5 WHERE run_id IN (SELECT run_id FROM w) AND {SUSPENDED}"
)
# The wait, its run's attempt, and whether the step is done, with the wait's row locked.
OPEN_WAIT: Final = (
    "SELECT r.attempt, EXISTS (SELECT 1 FROM steps AS s"
    " WHERE s.run_id = p.run_id AND s.step_id = p.step_id)"
    " FROM pending AS p JOIN runs AS r ON r.run_id = p.run_id"
    " WHERE p.run_id = $1 AND p.step_id = $2 AND p.kind = 'wait' FOR UPDATE OF p"
)
INSERT_EVENT: Final = (
    "INSERT INTO events (event_id, name, data, ts) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (event_id) DO NOTHING"
)
EVENTS_SINCE: Final = (
    "SELECT event_id, name, data, ts FROM events WHERE name = $1 AND ts >= $2"
    " ORDER BY ts, event_id LIMIT $3"
)


class Suspensions(PostgresConnections):
    """The SuspensionStore Protocol on PostgreSQL."""

    __slots__ = ()

    async def claim_due(
        self, owner: str, now: float, lease_ttl: float, limit: int = 500
    ) -> list[RunRow]:
        """See SuspensionStore.claim_due; also sets `updated_at` to now."""
        until = now + lease_ttl
        rows = await self._claim(
            "claiming due runs", DUE, (now, limit), CLAIM_DUE, (owner, until, now)
        )
        return leased(rows, owner, until, status=RunStatus.RUNNING, wake_at=None, updated_at=now)

    async def add_event(
        self, event_id: str, name: str, data: bytes, ts: float, *, page: int = 500
    ) -> AddedEvent:
        """See SuspensionStore.add_event. Holds EVENTS_LOCK, so a run suspends either
        before (its wait is matched here) or after this commits (it finds the event)."""
        async with self._transaction("recording an event") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
            if affected(await conn.execute(INSERT_EVENT, event_id, name, data, ts)) != 1:
                return AddedEvent(False)
            event = RecordedEvent(event_id, name, data, ts)
            completed: list[CompletedWait] = []
            after = ""  # sorts before every JSON array
            while True:
                lists = [str(row[0]) for row in await conn.fetch(PATH_LISTS, name, after, page)]
                for paths in lists:
                    key = event.key(paths)
                    if key is not None:
                        completed += await _complete(conn, event, (paths, key), page)
                if len(lists) < page:
                    break
                after = lists[-1]
            completed += await _complete(conn, event, None, page)
        return AddedEvent(True, tuple(completed))

    async def complete_wait(self, run_id: str, step_id: str, output: bytes, now: float) -> bool:
        """See SuspensionStore.complete_wait. The wait's row stays locked from the check
        to the commit: a second call for the same wait waits, then finds it gone."""
        async with self._transaction("completing a wait") as conn:
            found = await conn.fetchrow(OPEN_WAIT, run_id, step_id)
            if found is None or found[1]:
                return False
            await conn.execute(COMPLETE, [run_id], [step_id], [found[0]], output, now)
        return True


async def _complete(
    conn: Connection, event: RecordedEvent, key: tuple[str, bytes] | None, page: int
) -> list[CompletedWait]:
    """Complete the open waits behind `key` (None: the unindexed ones, those the event
    fits), a page at a time, in the caller's transaction; one statement per page."""
    done: list[CompletedWait] = []
    cursor: tuple[Any, ...] = ("", "") if key else (b"", "", "")  # sorts first
    while True:
        if key:
            rows = await conn.fetch(WAITS_BY_KEY, event.name, *key, *cursor, page)
        else:
            rows = await conn.fetch(WAITS_UNINDEXED, event.name, *cursor, page)
        if not rows:
            return done
        last = rows[-1]
        cursor = (last[0], last[1]) if key else (last[3] or b"", last[0], last[1])
        fits = rows if key else [r for r in rows if event.fits(r[3])]
        if fits:
            runs, steps, attempts = ([r[i] for r in fits] for i in range(3))
            await conn.execute(COMPLETE, runs, steps, attempts, event.output, event.ts)
            done += (CompletedWait(r[0], r[1], event.output) for r in fits)
        if len(rows) < page:
            return done
