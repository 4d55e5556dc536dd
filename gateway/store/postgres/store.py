"""PostgreSQL store (asyncpg): a pool of connections to one database that any number of
gateway nodes share.

Never commits part of a batch, never hands two nodes the same run from a claim. This
module holds runs, steps, leases, keys and retention; `suspensions` the pending sleeps,
waits and events; the reads are the dialects' shared `gateway.store.reads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

from gateway.store.postgres import listing, suspensions
from gateway.store.postgres.cluster import CHANNEL, NOTIFY, notices
from gateway.store.postgres.connection import Connection, affected
from gateway.store.postgres.server import Server, describe_error
from gateway.store.postgres.sql import (
    CLAIM,
    CLAIM_KEY,
    CLAIM_LEASE,
    EXPIRED,
    FIND_KEY,
    GET_BODY,
    GET_META,
    GET_RUN,
    INSERT_META,
    LIST_ATTEMPTS,
    LOAD_STEPS,
    NOT_MINE,
    PURGE,
    PURGE_CHUNKS,
    PURGE_EVENTS,
    PURGEABLE_UNCHUNKED,
    READ_BODY,
    RELEASE,
    RENEW,
    Step,
    plan,
)
from gateway.store.postgres.suspensions import EVENTS_LOCK, SHARE_EVENTS_LOCK, Suspensions
from gateway.store.reads import Reads, ReadSql
from gateway.store.records import CreateRun, KeyRow, RunRow, SuspendRun, Write
from gateway.store.rows import keyed_params, leased

__all__ = ["PostgresStore", "Server", "describe_error"]


async def execute(conn: Connection, steps: list[Step]) -> None:
    """Run a batch's planned steps in order, in the caller's transaction: one execution
    for a single parameter row (an array statement's is one), else an executemany."""
    for sql, rows in steps:
        if len(rows) == 1:
            await conn.execute(sql, *rows[0])
        else:
            await conn.executemany(sql, rows)


@final
class PostgresStore(Reads, Suspensions):
    """The FullStore Protocol on a PostgreSQL database shared by every gateway node.

    Open it with `await PostgresStore.open(dsn, pool=10)`.
    """

    __slots__ = ()

    reads = ReadSql(
        get_run=GET_RUN,
        get_body=GET_BODY,
        read_body=READ_BODY,
        load_steps=LOAD_STEPS,
        list_attempts=LIST_ATTEMPTS,
        get_meta=GET_META,
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
        mark=lambda n: f"${n}",
    )

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit all writes in one transaction; roll back and raise on failure:
        StoreRejected when one of them can never be stored, else StoreUnavailable."""
        if not writes:
            return
        self._check_open()
        steps = plan(writes)
        suspends = any(isinstance(write, SuspendRun) for write in writes)
        doing = f"writing {len(writes)} writes" if len(writes) > 1 else "writing 1 write"
        heard = notices(writes)
        async with self._transaction(doing, refusals=True) as conn:
            if suspends:
                await conn.execute(SHARE_EVENTS_LOCK, EVENTS_LOCK)
            await execute(conn, steps)
            if heard:  # delivered on commit, never before: a notice never outruns its change
                await conn.execute(NOTIFY, CHANNEL, heard)

    async def create_keyed(self, write: CreateRun) -> KeyRow | None:
        """See Store.create_keyed: the key first, so a taken one writes nothing; a
        duplicate's insert waits for the first one's transaction, then finds its key."""
        claim = keyed_params(write)
        self._check_open()
        async with self._transaction("creating a keyed run", refusals=True) as conn:
            if await conn.fetchval(CLAIM_KEY, *claim) is None:
                row = await conn.fetchrow(FIND_KEY, *claim[:2])
                assert row is not None  # the conflict was with it, committed
                return KeyRow(str(row[0]), str(row[1]))
            await execute(conn, plan([write]))
        return None

    async def claim_unfinished(
        self, owner: str, now: float, lease_ttl: float, limit: int = 1000, *, steal: bool = False
    ) -> list[RunRow]:
        """See Store.claim_unfinished; rows locked with SKIP LOCKED, so it is atomic."""
        until = now + lease_ttl
        params: tuple[Any, ...]
        if steal:
            sql, params = CLAIM.format(which=NOT_MINE, limit="$3"), (now, owner, limit)
        else:
            sql, params = CLAIM.format(which=EXPIRED, limit="$2"), (now, limit)
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
            return affected(await conn.execute(sql, *params))

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        """Delete up to `limit` body chunks of runs finished before cutoff, then up to
        `limit` such runs with no chunk left and all that hangs off them, and up to
        `limit` older events; returns the largest count (see Store.purge_before).

        The runs are read and locked inside the transaction that deletes them, so every
        table loses exactly the same runs, and a node purging at once takes others.
        """
        async with self._transaction("purging finished runs") as conn:
            chunks = affected(await conn.execute(PURGE_CHUNKS, cutoff, limit, limit))
            ids = [row[0] for row in await conn.fetch(PURGEABLE_UNCHUNKED, cutoff, limit)]
            if ids:
                for sql in PURGE:
                    await conn.execute(sql, ids)
            events = affected(await conn.execute(PURGE_EVENTS, cutoff, limit))
        return max(len(ids), events, chunks)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Insert, then read back in a statement of its own: it sees a racing node's
        committed value (the insert waited for it), so every node agrees on one."""
        async with self._transaction(f"setting meta {key!r}") as conn:
            await conn.execute(INSERT_META, key, value)
            row = await conn.fetchrow(GET_META, key)
        assert row is not None  # inserted or already there, inside the same transaction
        return str(row[0])
