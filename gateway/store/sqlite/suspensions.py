"""SQLite side of durable sleep and wait-for-event: due runs, pending rows, events.

Reads due runs through the wake index only, so pending timers cost nothing until due;
never completes one wait twice (check and write share one transaction).
"""

from __future__ import annotations

from typing import Any, Final

import aiosqlite

from gateway.store.match_keys import RecordedEvent
from gateway.store.records import (
    AddedEvent,
    CompletedWait,
    RunRow,
    RunStatus,
)
from gateway.store.rows import PENDING_COLUMNS, RUN_COLUMNS, leased
from gateway.store.schema import SUSPENDED
from gateway.store.sqlite.connection import SqliteConnections
from gateway.store.sqlite.sql import claim_updates, multi_row

# Through runs_suspended_wake, named: without statistics the planner prefers the
# listing index on (status, ...) and reads every suspended run (measured: 100k runs,
# 11 ms for the earliest wake instead of 0.1); INDEXED BY makes a statement that
# cannot use it fail rather than scan. Its predicate is repeated word for word. A live
# lease is skipped, although a suspension releases it, in case one was set since.
_WAKE_INDEX: Final = "runs INDEXED BY runs_suspended_wake"
DUE: Final = (
    f"SELECT {RUN_COLUMNS} FROM {_WAKE_INDEX} WHERE {SUSPENDED} AND wake_at <= ?"
    " AND (lease_until IS NULL OR lease_until < ?) ORDER BY wake_at LIMIT ?"
)
# What claiming a due run sets (see `sqlite_sql.claim_updates`).
CLAIM_DUE: Final = (
    f"status = '{RunStatus.RUNNING}', wake_at = NULL, owner = ?, lease_until = ?, updated_at = ?"
)
NEXT_WAKE: Final = f"SELECT min(wake_at) FROM {_WAKE_INDEX} WHERE {SUSPENDED}"
COUNT_TIMERS: Final = (
    f"SELECT count(*) FROM {_WAKE_INDEX} WHERE {SUSPENDED} AND wake_at IS NOT NULL"
)
GET_PENDING: Final = f"SELECT {PENDING_COLUMNS} FROM pending WHERE run_id = ? AND step_id = ?"
LIST_PENDING: Final = (
    f"SELECT {PENDING_COLUMNS} FROM pending WHERE run_id = ? ORDER BY created_at, step_id"
)
# A range of the attempts primary key (run_id, attempt).
COUNT_SUSPENDS: Final = "SELECT count(*) FROM attempts WHERE run_id = ? AND outcome = 'suspended'"
# Index-only on pending_wait: no join, so a scrape never reads 100k runs rows.
COUNT_PENDING: Final = "SELECT kind, count(*) FROM pending GROUP BY kind"
# The next distinct path lists of an event's waits after a cursor, one index seek each
# (a loose index scan: DISTINCT would read every wait of the name); LIMIT bounds the
# recursion itself.
PATH_LISTS: Final = (
    "WITH RECURSIVE d (paths) AS ("
    " SELECT (SELECT paths FROM pending WHERE kind = 'wait' AND event = ?1 AND paths > ?2"
    " ORDER BY paths LIMIT 1)"
    " UNION ALL SELECT (SELECT paths FROM pending WHERE kind = 'wait' AND event = ?1"
    " AND paths > d.paths ORDER BY paths LIMIT 1) FROM d WHERE d.paths IS NOT NULL LIMIT ?3"
    ") SELECT paths FROM d WHERE paths IS NOT NULL"
)
# Open waits of suspended runs behind a key, a keyset page at a time in the index's own
# order (its rows end with the primary key). A live run's wait is left to its driver,
# which looks for missed events when the run suspends (`suspensions.missed_event`).
_OPEN_WAITS: Final = (
    "SELECT p.run_id, p.step_id, r.attempt, p.match"
    " FROM pending AS p INDEXED BY pending_match JOIN runs AS r ON r.run_id = p.run_id"
    " WHERE p.kind = 'wait' AND p.event = ? AND {key} AND ({order}) > ({cursor})"
    " AND r.status = 'suspended' AND NOT EXISTS (SELECT 1 FROM steps AS s"
    " WHERE s.run_id = p.run_id AND s.step_id = p.step_id)"
    " ORDER BY {order} LIMIT ?"
)
WAITS_BY_KEY: Final = _OPEN_WAITS.format(
    key="p.paths = ? AND p.match = ?", order="p.run_id, p.step_id", cursor="?, ?"
)
# Waits the index cannot serve (see schema version 4), matched one by one in Python;
# match is in their order too, as in the index after a NULL path list.
WAITS_UNINDEXED: Final = _OPEN_WAITS.format(
    key="p.paths IS NULL", order="p.match, p.run_id, p.step_id", cursor="?, ?, ?"
)
DELETE_WAITS: Final = "DELETE FROM pending WHERE (run_id, step_id) IN (VALUES (?, ?))"
# The wait, its run's attempt, and whether the step is done, in one read.
OPEN_WAIT: Final = (
    "SELECT r.attempt, EXISTS (SELECT 1 FROM steps AS s"
    " WHERE s.run_id = p.run_id AND s.step_id = p.step_id)"
    " FROM pending AS p JOIN runs AS r ON r.run_id = p.run_id"
    " WHERE p.run_id = ? AND p.step_id = ? AND p.kind = 'wait'"
)
INSERT_STEP: Final = (
    "INSERT INTO steps (run_id, step_id, output, attempt, created_at) VALUES (?, ?, ?, ?, ?)"
)
DELETE_PENDING: Final = "DELETE FROM pending WHERE run_id = ? AND step_id = ?"
MAKE_DUE: Final = f"UPDATE runs SET wake_at = ? WHERE run_id = ? AND {SUSPENDED}"
INSERT_EVENT: Final = (
    "INSERT INTO events (event_id, name, data, ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (event_id) DO NOTHING"
)
EVENTS_SINCE: Final = (
    "SELECT event_id, name, data, ts FROM events WHERE name = ? AND ts >= ?"
    " ORDER BY ts, event_id LIMIT ?"
)


class Suspensions(SqliteConnections):
    """The SuspensionStore Protocol on SQLite."""

    __slots__ = ()

    async def claim_due(
        self, owner: str, now: float, lease_ttl: float, limit: int = 500
    ) -> list[RunRow]:
        """See SuspensionStore.claim_due; also sets `updated_at` to now."""
        until = now + lease_ttl
        rows = await self._claim(
            "claiming due runs", DUE, (now, now, limit), CLAIM_DUE, (owner, until, now)
        )
        return leased(rows, owner, until, status=RunStatus.RUNNING, wake_at=None, updated_at=now)

    async def add_event(
        self, event_id: str, name: str, data: bytes, ts: float, *, page: int = 500
    ) -> AddedEvent:
        """See SuspensionStore.add_event. The write transaction is the lock, as in
        `complete_wait`: a wait is either in the store when it runs, and matched here, or
        committed after it, and then its run finds the stored event itself."""
        async with self._transaction("recording an event") as conn:
            async with conn.execute(INSERT_EVENT, (event_id, name, data, ts)) as cur:
                if cur.rowcount != 1:
                    return AddedEvent(False)
            event = RecordedEvent(event_id, name, data, ts)
            completed: list[CompletedWait] = []
            after = ""  # sorts before every JSON array
            while True:
                async with conn.execute(PATH_LISTS, (name, after, page)) as cur:
                    lists = [str(row[0]) for row in await cur.fetchall()]
                for paths in lists:
                    key = event.key(paths)
                    if key is not None:
                        completed += await _complete(conn, event, WAITS_BY_KEY, (paths, key), page)
                if len(lists) < page:
                    break
                after = lists[-1]
            completed += await _complete(conn, event, WAITS_UNINDEXED, (), page)
        return AddedEvent(True, tuple(completed))

    async def complete_wait(self, run_id: str, step_id: str, output: bytes, now: float) -> bool:
        """See SuspensionStore.complete_wait. The write transaction is the lock: a second
        call for the same wait runs after the first committed, and finds it gone."""
        async with self._transaction("completing a wait") as conn:
            async with conn.execute(OPEN_WAIT, (run_id, step_id)) as cur:
                found = await cur.fetchone()
            if found is None or found[1]:
                return False
            await conn.execute(INSERT_STEP, (run_id, step_id, output, found[0], now))
            await conn.execute(DELETE_PENDING, (run_id, step_id))
            await conn.execute(MAKE_DUE, (now, run_id))
        return True


async def _complete(
    conn: aiosqlite.Connection, event: RecordedEvent, select: str, key: tuple[Any, ...], page: int
) -> list[CompletedWait]:
    """Complete the open waits `select` finds behind `key` (none: unindexed ones) that
    the event fits, a page at a time, in the caller's transaction: store the step,
    delete the wait, make the run due at the event's time. A few statements per page,
    never one per wait.
    """
    done: list[CompletedWait] = []
    cursor: tuple[Any, ...] = ("", "") if key else ("", "", "")  # "" sorts first
    while True:
        async with conn.execute(select, (event.name, *key, *cursor, page)) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            return done
        last = rows[-1]
        cursor = (last[0], last[1]) if key else (last[3], last[0], last[1])
        fits = rows if key else [r for r in rows if event.fits(r[3])]
        if fits:
            output, ts = event.output, event.ts
            steps = [(r[0], r[1], output, r[2], ts) for r in fits]
            waits = [(r[0], r[1]) for r in fits]
            for sql, rows_args in multi_row(INSERT_STEP, steps) + multi_row(DELETE_WAITS, waits):
                for args in rows_args:
                    await conn.execute(sql, args)
            for sql, args in claim_updates("wake_at = ?", (ts,), [r[0] for r in fits]):
                await conn.execute(sql, args)
            done += (CompletedWait(r[0], r[1], output) for r in fits)
        if len(rows) < page:
            return done
