"""Embedded SQLite store (aiosqlite): one write connection fed by the writer, one for reads.

Never commits part of a batch, never lets a read see a write that has not committed, and
never lets two gateway processes use one file (an exclusive lock on `<file>.lock`).
This module holds runs, steps, leases, keys and retention; `suspensions` the pending
sleeps, waits and events; the reads are the dialects' shared `gateway.store.reads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

from gateway.config.storage_url import MEMORY
from gateway.store.reads import Reads, ReadSql
from gateway.store.records import CreateRun, KeyRow, RunRow, Write
from gateway.store.rows import RUN_COLUMNS, keyed_params, leased
from gateway.store.sqlite import listing, suspensions
from gateway.store.sqlite.cluster import AloneCluster
from gateway.store.sqlite.connection import describe_error, path_from_url
from gateway.store.sqlite.sql import (
    CLAIM,
    CLAIM_KEY,
    CLAIM_LEASE,
    EXPIRED,
    FIND_KEY,
    GET_BODY,
    LIST_ATTEMPTS,
    NOT_MINE,
    PURGE,
    PURGE_CHUNKS,
    PURGE_EVENTS,
    PURGEABLE_UNCHUNKED,
    READ_BODY,
    RELEASE,
    RENEW,
    multi_row,
    plan,
)
from gateway.store.sqlite.suspensions import Suspensions

__all__ = ["MEMORY", "SqliteStore", "describe_error", "path_from_url"]


@final
class SqliteStore(Reads, Suspensions):
    """The FullStore Protocol on one SQLite file in WAL mode, used by one process at a time.

    Open it with `await SqliteStore.open(url)`.
    """

    __slots__ = ()

    cluster = AloneCluster()
    """No other process shares the file (see `exclusive`)."""

    reads = ReadSql(
        get_run=f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?",
        get_body=GET_BODY,
        read_body=READ_BODY,
        load_steps="SELECT step_id, output FROM steps WHERE run_id = ?",
        list_attempts=LIST_ATTEMPTS,
        get_meta="SELECT value FROM meta WHERE key = ?",
        find_key=FIND_KEY,
        next_wake=suspensions.NEXT_WAKE,
        count_timers=suspensions.COUNT_TIMERS,
        count_suspends=suspensions.COUNT_SUSPENDS,
        count_pending=suspensions.COUNT_PENDING,
        get_pending=suspensions.GET_PENDING,
        list_pending=suspensions.LIST_PENDING,
        events_since=suspensions.EVENTS_SINCE,
        list_steps=listing.STEPS,
        list_step_errors=listing.STEP_ERRORS,
        mark=lambda n: "?",
    )

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit all writes in one transaction; roll back and raise on failure:
        StoreRejected when one of them can never be stored, else StoreUnavailable."""
        if not writes:
            return
        self._check_open()
        statements = plan(writes)
        doing = f"writing {len(writes)} writes" if len(writes) > 1 else "writing 1 write"
        async with self._transaction(doing, refusals=True) as conn:
            for sql, rows in statements:
                await conn.executemany(sql, rows)

    async def create_keyed(self, write: CreateRun) -> KeyRow | None:
        """See Store.create_keyed: the key first, so a taken one writes nothing."""
        claim = keyed_params(write)
        self._check_open()
        async with self._transaction("creating a keyed run", refusals=True) as conn:
            async with conn.execute(CLAIM_KEY, claim) as cur:
                won = await cur.fetchone()
            if won is None:
                async with conn.execute(FIND_KEY, claim[:2]) as cur:
                    row = await cur.fetchone()
                assert row is not None  # the conflict was with it, in this transaction
                return KeyRow(str(row[0]), str(row[1]))
            for sql, rows in plan([write]):
                await conn.executemany(sql, rows)
        return None

    async def claim_unfinished(
        self, owner: str, now: float, lease_ttl: float, limit: int = 1000, *, steal: bool = False
    ) -> list[RunRow]:
        """See Store.claim_unfinished; read and lease in one transaction, so it is atomic."""
        until = now + lease_ttl
        params: tuple[Any, ...]
        if steal:
            sql, params = CLAIM.format(which=NOT_MINE), (now, owner, limit)
        else:
            sql, params = CLAIM.format(which=EXPIRED), (now, limit)
        rows = await self._claim(
            "claiming unfinished runs", sql, params, CLAIM_LEASE, (owner, until)
        )
        return leased(rows, owner, until)

    async def renew_leases(self, owner: str, until: float) -> int:
        return await self._update_leases(RENEW, (until, owner), "renewing leases")

    async def release_leases(self, owner: str) -> int:
        return await self._update_leases(RELEASE, (owner,), "releasing leases")

    async def _update_leases(self, sql: str, params: tuple[Any, ...], doing: str) -> int:
        async with self._transaction(doing) as conn:
            async with conn.execute(sql, params) as cur:
                return cur.rowcount

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        """Delete up to `limit` body chunks of runs finished before cutoff, then up to
        `limit` such runs with no chunk left and all that hangs off them, and up to
        `limit` older events; returns the largest count (see Store.purge_before).

        The ids are read inside the same transaction that deletes them, so every
        table loses exactly the same runs.
        """
        async with self._transaction("purging finished runs") as conn:
            async with conn.execute(PURGE_CHUNKS, (cutoff, limit, limit)) as cur:
                chunks = cur.rowcount
            async with conn.execute(PURGEABLE_UNCHUNKED, (cutoff, limit)) as cur:
                ids = [(row[0],) for row in await cur.fetchall()]
            for sql in PURGE:
                for statement, rows in multi_row(sql, ids):
                    await conn.executemany(statement, rows)
            async with conn.execute(PURGE_EVENTS, (cutoff, limit)) as cur:
                events = cur.rowcount
        return max(len(ids), events, chunks)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Insert and read back in one transaction, so racing processes agree on one value."""
        async with self._transaction(f"setting meta {key!r}") as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        assert row is not None  # inserted or already there, inside the same transaction
        return str(row[0])
