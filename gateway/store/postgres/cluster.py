"""The nodes sharing one PostgreSQL database: presence, takeover, fencing, notices.

Each node keeps one connection of its own, outside the pool. On it the node holds a
session-level advisory lock keyed by its owner id for as long as its process lives, so
when a node dies (kill -9, OOM, a host lost) the server ends its session and the lock
goes with it: the other nodes see it gone in about a second, long before its leases
would expire. The same connection LISTENs for the notices the store's writes send
(`pg_notify` in the committing transaction, so a notice never outruns its change), and
answers the few queries about other nodes. When it drops, it is re-established with
backoff, the lock retaken and RESYNC heard, so waiters re-read what they may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from gateway.errors import StoreUnavailable
from gateway.logs import Burst
from gateway.store.postgres.server import Server, mapped_errors
from gateway.store.protocols import Notice, OnNotice
from gateway.store.records import (
    BeginBody,
    CancelRun,
    CreateRun,
    FinishRun,
    RunRow,
    RunStatus,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.rows import RUN_COLUMNS, run_row
from gateway.store.schema import ACTIVE
from gateway.tasks import spawn

log = logging.getLogger("gateway.store.postgres")

CHANNEL: Final = "durable_gateway"
"""The LISTEN/NOTIFY channel; payloads are `<notice>:<run id>`."""
NOTIFY: Final = "SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n"
PING_EVERY: Final = 2.0
"""Seconds between checks that the connection still answers (a partition sends no FIN)."""
CONNECT_TIMEOUT: Final = 5.0

_KEY: Final = "hashtextextended({owner}, 0)"
_TRY_LOCK: Final = f"SELECT pg_try_advisory_lock({_KEY.format(owner='$1')})"
_LOCK: Final = f"SELECT pg_advisory_lock({_KEY.format(owner='$1')})"
# This node's own earlier session, which the server has not yet seen die (a partition
# sends no FIN), still holds the lock: end it, then take the lock. Same role: allowed.
_END_STALE: Final = (
    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory'"
    " AND l.granted AND l.objsubid = 1 AND l.pid <> pg_backend_pid()"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    f" AND l.classid = (({_KEY.format(owner='$1')} >> 32) & 4294967295)::oid"
    f" AND l.objid = ({_KEY.format(owner='$1')} & 4294967295)::oid"
)
_KEEPALIVE: Final = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
}
"""The server drops a presence session whose host vanished (no FIN) within about 8 s,
and with it the node's lock, instead of after the system's default of hours."""
# An advisory lock on a bigint key shows in pg_locks as its high and low 32 bits.
_HELD: Final = (
    "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    f" AND l.classid = (({_KEY.format(owner='o.owner')} >> 32) & 4294967295)::oid"
    f" AND l.objid = ({_KEY.format(owner='o.owner')} & 4294967295)::oid)"
)
_ABSENT: Final = (
    "SELECT o.owner FROM (SELECT DISTINCT owner FROM runs"
    f" WHERE {ACTIVE} AND owner IS NOT NULL AND owner <> $1 AND lease_until >= $2) o"
    f" WHERE NOT {_HELD}"
)
_TAKE_OVER: Final = (
    "WITH picked AS (SELECT run_id FROM runs"
    f" WHERE {ACTIVE} AND owner = ANY($1::text[])"
    " ORDER BY wake_at NULLS FIRST, created_at, run_id LIMIT $4 FOR UPDATE SKIP LOCKED)"
    " UPDATE runs SET owner = $2, lease_until = $3"
    f" WHERE run_id IN (SELECT run_id FROM picked) RETURNING {RUN_COLUMNS}"
)
# Another owner, or none: taken, and maybe finished, parked or cancelled since.
_TAKEN: Final = (
    "SELECT run_id FROM runs WHERE run_id = ANY($1::text[]) AND owner IS DISTINCT FROM $2"
)


def notices(writes: Sequence[Write]) -> list[str]:
    """The notices a batch sends when it commits: a run that finished, parked, began
    streaming a body or was cancelled wakes its waiters on every node; a cancel also
    stops its attempt where it runs. A run created in the same batch had no waiter
    anywhere yet."""
    created = {w.run_id for w in writes if isinstance(w, CreateRun)}
    heard: list[str] = []
    for write in writes:
        if isinstance(write, CancelRun):
            heard.append(f"{Notice.CANCEL}:{write.run_id}")
        elif isinstance(write, FinishRun | SuspendRun | BeginBody) or (
            isinstance(write, UpdateRun) and write.status == RunStatus.PAUSED
        ):
            if write.run_id not in created:
                heard.append(f"{Notice.RUN}:{write.run_id}")
    return heard


class PostgresCluster:
    """`Cluster` on the database a PostgresStore uses."""

    def __init__(self, dsn: str, server: Server) -> None:
        self._dsn = dsn
        self._server = server
        self._owner = ""
        self._on_notice: OnNotice | None = None
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._dropped = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._left = False

    async def join(self, owner: str, on_notice: OnNotice) -> None:
        self._owner, self._on_notice = owner, on_notice
        self._conn = await self._connect()
        self._keeper = spawn(self._keep_joined(), name="cluster-presence")

    async def _connect(self) -> asyncpg.Connection:
        async with mapped_errors(self._server, "joining the cluster"):
            conn: asyncpg.Connection = await asyncpg.connect(
                self._dsn,
                timeout=CONNECT_TIMEOUT,
                # pg_stat_activity shows which node a presence session is
                server_settings={"application_name": f"gateway {self._owner}"[:63], **_KEEPALIVE},
            )
            try:
                if not await conn.fetchval(_TRY_LOCK, self._owner):
                    await conn.execute(_END_STALE, self._owner)
                    await conn.execute(_LOCK, self._owner, timeout=CONNECT_TIMEOUT)
                await conn.add_listener(CHANNEL, self._heard)
            except BaseException:
                conn.terminate()
                raise
        conn.add_termination_listener(lambda _: self._dropped.set())
        return conn

    async def _keep_joined(self) -> None:
        """Ping the connection; when it fails or drops, reconnect (with backoff) and
        tell the node to re-read the store."""
        while not self._left:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_EVERY):
                    await self._dropped.wait()
            if self._left:
                return
            if not self._dropped.is_set() and await self._answers():
                continue
            self._dropped.clear()
            self._close_quietly()
            trouble = Burst(log, "the cluster connection")
            trouble.failed("it dropped; re-establishing it")
            delay = 0.1
            while not self._left:
                try:
                    self._conn = await self._connect()
                    break
                except StoreUnavailable as exc:
                    trouble.failed(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            else:
                return
            trouble.ok()
            if self._on_notice is not None:
                self._on_notice(Notice.RESYNC, "")

    async def _answers(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with self._lock, asyncio.timeout(PING_EVERY):
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 — any failure means: reconnect
            log.warning("cluster connection does not answer: %s", exc)
            return False
        return True

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        kind, _, run_id = str(payload).partition(":")
        try:
            notice = Notice(kind)
        except ValueError:
            return
        if self._on_notice is not None:
            self._on_notice(notice, run_id)

    async def _query(self, doing: str, method: str, sql: str, *args: Any) -> Any:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise StoreUnavailable(f"postgresql: {doing} failed: the cluster connection is down")
        async with mapped_errors(self._server, doing), self._lock:
            return await getattr(conn, method)(sql, *args)

    async def absent(self, owner: str, now: float) -> list[str]:
        rows = await self._query("looking for nodes that are gone", "fetch", _ABSENT, owner, now)
        return [row[0] for row in rows]

    async def take_over(
        self, owner: str, gone: Sequence[str], now: float, lease_ttl: float, limit: int
    ) -> list[RunRow]:
        rows = await self._query(
            "taking over runs", "fetch", _TAKE_OVER, list(gone), owner, now + lease_ttl, limit
        )
        return [run_row(row) for row in rows]

    async def taken(self, owner: str, run_ids: Sequence[str]) -> list[str]:
        rows = await self._query("checking leases", "fetch", _TAKEN, list(run_ids), owner)
        return [row[0] for row in rows]

    async def leave(self) -> None:
        self._left = True
        self._dropped.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
