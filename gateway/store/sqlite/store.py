"""Embedded SQLite store (aiosqlite): one write connection fed by the writer, one for reads.

Never commits part of a batch, never lets a read see a write that has not committed, and
never lets two gateway processes use one file (an exclusive lock on `<file>.lock`).
This module holds runs, steps, leases, keys and retention; `sqlite_suspensions.py` the
pending sleeps, waits and events; `sqlite_listing.py` the admin reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

from gateway.config.storage_url import MEMORY
from gateway.store.records import AttemptRow, BodyRow, KeyRow, RunRow, Write
from gateway.store.rows import (
    RUN_COLUMNS,
    body_bytes,
    body_row,
    check_range,
    leased,
    run_row,
)
from gateway.store.sqlite.cluster import AloneCluster
from gateway.store.sqlite.connection import describe_error, path_from_url
from gateway.store.sqlite.listing import RunListing
from gateway.store.sqlite.sql import (
    CLAIM,
    CLAIM_LEASE,
    EXPIRED,
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
class SqliteStore(Suspensions, RunListing):
    """The FullStore Protocol on one SQLite file in WAL mode, used by one process at a time.

    Open it with `await SqliteStore.open(url)`.
    """

    __slots__ = ()

    cluster = AloneCluster()
    """No other process shares the file (see `exclusive`)."""

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

    async def find_idempotency(self, route: str, key: str) -> KeyRow | None:
        row = await self._read_one(
            "SELECT fingerprint, run_id FROM idempotency_keys WHERE route = ? AND idem_key = ?",
            route,
            key,
        )
        return None if row is None else KeyRow(str(row[0]), str(row[1]))

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

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._read_one(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", run_id)
        return None if row is None else run_row(row)

    async def get_body(self, run_id: str) -> BodyRow | None:
        row = await self._read_one(GET_BODY, run_id)
        return None if row is None else body_row(row)

    async def read_body(self, run_id: str, offset: int, limit: int) -> bytes:
        if not check_range(offset, limit):
            return b""
        return body_bytes(await self._read_all(READ_BODY, run_id, offset, limit), offset, limit)

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        rows = await self._read_all("SELECT step_id, output FROM steps WHERE run_id = ?", run_id)
        return {row[0]: bytes(row[1]) for row in rows}

    async def list_attempts(self, run_id: str) -> list[AttemptRow]:
        rows = await self._read_all(LIST_ATTEMPTS, run_id)
        return [AttemptRow(*row) for row in rows]

    async def get_meta(self, key: str) -> str | None:
        row = await self._read_one("SELECT value FROM meta WHERE key = ?", key)
        return None if row is None else str(row[0])

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
