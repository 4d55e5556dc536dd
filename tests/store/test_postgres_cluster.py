"""The PostgreSQL cluster seam on a real server: presence that ends with the session,
takeover of a gone owner's runs, the fencing read, and notices sent on commit."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.store import (
    BeginBody,
    CancelRun,
    CreateRun,
    FinishRun,
    Notice,
    PutStep,
    RunStatus,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.cluster import notices
from tests.helpers import assert_eventually
from tests.postgres import PgServer
from tests.store.records import REQUEST, create, ids

RESPONSE = StoredResponse(200, [], b"ok")


@pytest.fixture
async def dsn(pg_server: PgServer) -> str:
    return await pg_server.create_database()


async def test_an_owner_is_absent_once_its_session_ends_and_its_runs_can_be_taken(
    dsn: str,
) -> None:
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    try:
        await a.cluster.join("node-a:1", lambda n, r: None)
        await b.cluster.join("node-b:1", lambda n, r: None)
        await a.apply([create(f"r{i}", owner="node-a:1", lease_until=1e12) for i in range(3)])
        # A run woken from a sleep by node-a: taken over, it still says what it slept on.
        await a.apply([SuspendRun("r0", 1, 50.0, 60.0, "sleep:nap")])
        assert ids(await a.claim_due("node-a:1", 70.0, 1e12)) == ["r0"]
        assert await b.cluster.absent("node-b:1", 100.0) == []  # alive: its lock is held
        await a.cluster.leave()  # as a killed process's session ends

        async def gone() -> None:
            assert await b.cluster.absent("node-b:1", 100.0) == ["node-a:1"]

        await assert_eventually(gone)
        taken = await b.cluster.take_over("node-b:1", ["node-a:1"], 100.0, 10.0, 2)
        assert len(taken) == 2 and all(row.owner == "node-b:1" for row in taken)
        rest = await b.cluster.take_over("node-b:1", ["node-a:1"], 100.0, 10.0, 2)
        assert len(rest) == 1 and set(ids(taken + rest)) == {"r0", "r1", "r2"}
        on = {row.run_id: row.suspended_on for row in taken + rest}
        assert on == {"r0": "sleep:nap", "r1": None, "r2": None}
        lost = await b.cluster.taken("node-a:1", ["r0", "r1", "r2", "unknown"])
        assert sorted(lost) == ["r0", "r1", "r2"]  # an unknown (uncommitted) run is not lost
        assert await b.cluster.taken("node-b:1", ["r0", "r1", "r2"]) == []
    finally:
        await a.close()
        await b.close()


async def test_notices_are_heard_by_every_node_on_commit(dsn: str) -> None:
    a, b = await PostgresStore.open(dsn), await PostgresStore.open(dsn)
    heard: asyncio.Queue[tuple[Notice, str]] = asyncio.Queue()
    try:
        await a.cluster.join("node-a:1", lambda n, r: None)
        await b.cluster.join("node-b:1", lambda n, r: heard.put_nowait((n, r)))
        await a.apply([create("r1"), create("r2")])
        await a.apply([FinishRun("r1", "succeeded", RESPONSE, 2.0), CancelRun("r2", RESPONSE, 2.0)])
        got = {await asyncio.wait_for(heard.get(), 5) for _ in range(2)}
        assert got == {(Notice.RUN, "r1"), (Notice.CANCEL, "r2")}
        assert heard.empty()  # the creations sent none
    finally:
        await a.close()
        await b.close()


def test_which_writes_send_notices() -> None:
    made = CreateRun("new", "chat", REQUEST, 1.0)
    writes: list[Write] = [
        made,
        FinishRun("new", "succeeded", RESPONSE, 2.0),  # created in the batch: nobody waits
        FinishRun("old", "succeeded", RESPONSE, 2.0),
        CancelRun("gone", RESPONSE, 2.0),
        SuspendRun("nap", 1, 5.0, 2.0),
        UpdateRun("paused", RunStatus.PAUSED, 3, None, 2.0),
        UpdateRun("backoff", RunStatus.BACKOFF, 3, 5.0, 2.0),
        BeginBody("sse", 0, 1, 200, []),
        PutStep("old", "s", b"1", 1, 2.0),
    ]
    assert notices(writes) == ["run:old", "cancel:gone", "run:nap", "run:paused", "run:sse"]


async def test_joining_again_ends_this_nodes_stale_session(dsn: str) -> None:
    """A session of this node the server has not seen die (a partition sends no FIN)
    still holds its lock: joining ends it rather than waiting for it forever."""
    stale, probe = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    await stale.execute("SELECT pg_advisory_lock(hashtextextended('node-a:1', 0))")
    stale_pid = stale.get_server_pid()
    store = await PostgresStore.open(dsn)
    try:
        await asyncio.wait_for(store.cluster.join("node-a:1", lambda n, r: None), 10)

        async def ended() -> None:
            gone = await store.cluster.absent("other", 0.0)  # a query on the new session
            assert gone == []
            alive = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", stale_pid
            )
            assert alive == 0

        await assert_eventually(ended)
    finally:
        await store.close()
        stale.terminate()
        await probe.close()
