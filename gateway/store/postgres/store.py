"""PostgreSQL store (asyncpg): a pool of connections to one database that any number of
gateway nodes share.

Never commits part of a batch, never hands two nodes the same run from a claim. This
module holds runs, steps, leases, keys and retention; `suspensions` the pending sleeps,
waits and events; `listing` the admin reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

from gateway.store.postgres.cluster import CHANNEL, NOTIFY, notices
from gateway.store.postgres.connection import Connection, affected
from gateway.store.postgres.listing import RunListing
from gateway.store.postgres.server import Server, describe_error
from gateway.store.postgres.sql import (
    CLAIM,
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
from gateway.store.records import AttemptRow, BodyRow, KeyRow, RunRow, SuspendRun, Write
from gateway.store.rows import body_bytes, body_row, check_range, leased, run_row

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
class PostgresStore(Suspensions, RunListing):
    """The FullStore Protocol on a PostgreSQL database shared by every gateway node.

    Open it with `await PostgresStore.open(dsn, pool=10)`.
    """

    __slots__ = ()

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

    async def find_idempotency(self, route: str, key: str) -> KeyRow | None:
        row = await self._read_one(FIND_KEY, route, key)
        return None if row is None else KeyRow(str(row[0]), str(row[1]))

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

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._read_one(GET_RUN, run_id)
        return None if row is None else run_row(row)

    async def get_body(self, run_id: str) -> BodyRow | None:
        row = await self._read_one(GET_BODY, run_id)
        return None if row is None else body_row(row)

    async def read_body(self, run_id: str, offset: int, limit: int) -> bytes:
        if not check_range(offset, limit):
            return b""
        return body_bytes(await self._read_all(READ_BODY, run_id, offset, limit), offset, limit)

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        return {row[0]: bytes(row[1]) for row in await self._read_all(LOAD_STEPS, run_id)}

    async def list_attempts(self, run_id: str) -> list[AttemptRow]:
        return [AttemptRow(*row) for row in await self._read_all(LIST_ATTEMPTS, run_id)]

    async def get_meta(self, key: str) -> str | None:
        row = await self._read_one(GET_META, key)
        return None if row is None else str(row[0])

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Insert, then read back in a statement of its own: it sees a racing node's
        committed value (the insert waited for it), so every node agrees on one."""
        async with self._transaction(f"setting meta {key!r}") as conn:
            await conn.execute(INSERT_META, key, value)
            row = await conn.fetchrow(GET_META, key)
        assert row is not None  # inserted or already there, inside the same transaction
        return str(row[0])
