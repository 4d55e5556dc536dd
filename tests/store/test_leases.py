"""Run ownership in the store: claiming unfinished runs, renewing and releasing leases,
and (SQLite) the file lock that keeps a second gateway process off the same file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import (
    CreateRun,
    FinishRun,
    Store,
    StoredResponse,
    SuspendRun,
    UpdateRun,
)
from gateway.store.open import open_store
from gateway.store.sqlite import SqliteStore
from tests.helpers import ROOT
from tests.store.records import REQUEST, create, ids

DONE = StoredResponse(200, [], b"ok")
TTL = 30.0


async def lease_of(store: Store, run_id: str) -> tuple[str | None, float | None]:
    row = await store.get_run(run_id)
    assert row is not None
    return row.owner, row.lease_until


async def test_create_run_stores_attempt_owner_and_lease(store: Store) -> None:
    await store.apply(
        [CreateRun("r1", "chat", REQUEST, 100.0, attempt=1, owner="a", lease_until=130.0)]
    )

    row = await store.get_run("r1")

    assert row is not None
    assert (row.attempt, row.owner, row.lease_until) == (1, "a", 130.0)


async def test_claim_takes_unfinished_runs_and_leases_them(store: Store) -> None:
    await store.apply(
        [
            create("plain", at=100.0),
            create("done", at=90.0),
            FinishRun("done", "succeeded", DONE, 95.0),
            create("failed", at=91.0),
            FinishRun("failed", "failed", DONE, 96.0),
            create("cancelled", at=92.0),
            UpdateRun("cancelled", "cancelled", 1, None, 97.0),
            create("sleeping", at=80.0),
            UpdateRun("sleeping", "backoff", 2, 300.0, 101.0),
            create("retrying", at=110.0),
            UpdateRun("retrying", "running", 3, None, 111.0),
            # Parked: an operator resumes a paused run, the scheduler a suspended one.
            create("paused", at=70.0),
            UpdateRun("paused", "paused", 3, None, 111.0),
            create("suspended", at=71.0),
            SuspendRun("suspended", 2, 150.0, 111.0),
            create("waiting", at=72.0),
            SuspendRun("waiting", 2, None, 111.0),
        ]
    )

    rows = await store.claim_unfinished("a", 200.0, TTL)

    # Due ones first (no wake time, oldest first), then by wake time.
    assert ids(rows) == ["plain", "retrying", "sleeping"]
    assert all((row.owner, row.lease_until) == ("a", 230.0) for row in rows)
    assert [row.attempt for row in rows] == [1, 3, 2]
    assert rows[0].request == REQUEST
    for run_id in ids(rows):
        assert await lease_of(store, run_id) == ("a", 230.0)
    for run_id in ("done", "paused", "suspended", "waiting"):
        assert await lease_of(store, run_id) == (None, None)
    # Stealing takes live leases, never parked runs.
    stolen = await store.claim_unfinished("b", 200.0, TTL, steal=True)
    assert sorted(ids(stolen)) == ["plain", "retrying", "sleeping"]


async def test_claim_orders_by_wake_time_then_creation(store: Store) -> None:
    writes = [create(f"r{i}", at=100.0 + i) for i in range(6)]
    wakes = {"r0": 500.0, "r1": None, "r2": 400.0, "r3": None, "r4": 450.0, "r5": 400.0}
    updates = [UpdateRun(r, "backoff", 1, w, 120.0) for r, w in wakes.items() if w is not None]
    await store.apply([*writes, *updates])

    rows = await store.claim_unfinished("a", 200.0, TTL)

    assert ids(rows) == ["r1", "r3", "r2", "r5", "r4", "r0"]


async def test_claim_skips_live_leases_and_takes_expired_ones(store: Store) -> None:
    await store.apply(
        [
            create("live", owner="b", lease_until=250.0),
            create("expired", owner="b", lease_until=150.0),
            create("free"),
        ]
    )

    assert ids(await store.claim_unfinished("a", 200.0, TTL)) == ["expired", "free"]
    assert await lease_of(store, "live") == ("b", 250.0)
    # Exactly at lease_until a lease still holds; just past it, it is anyone's.
    assert await store.claim_unfinished("c", 230.0, TTL) == []
    assert ids(await store.claim_unfinished("c", 250.0, TTL)) == ["expired", "free"]
    assert ids(await store.claim_unfinished("d", 250.5, TTL)) == ["live"]
    assert await lease_of(store, "live") == ("d", 280.5)


async def test_an_owner_never_gets_its_live_runs_twice_but_retakes_expired_ones(
    store: Store,
) -> None:
    await store.apply([create("r1"), create("r2", owner="a", lease_until=300.0)])

    assert ids(await store.claim_unfinished("a", 200.0, TTL)) == ["r1"]
    # Already held and live: not handed out again, so a claim loop terminates.
    assert await store.claim_unfinished("a", 210.0, TTL) == []
    # Its lease on r1 ran out (it stopped renewing): the same owner may take it again.
    assert ids(await store.claim_unfinished("a", 231.0, TTL)) == ["r1"]
    assert await lease_of(store, "r1") == ("a", 261.0)


async def test_steal_takes_every_unfinished_run_but_its_own_live_ones(store: Store) -> None:
    await store.apply(
        [
            create("theirs", owner="dead", lease_until=1000.0),
            create("mine", owner="a", lease_until=1000.0),
            create("released", owner="a"),
            create("free"),
            create("done", owner="dead", lease_until=1000.0),
            FinishRun("done", "succeeded", DONE, 150.0),
        ]
    )

    rows = await store.claim_unfinished("a", 200.0, TTL, steal=True)

    assert sorted(ids(rows)) == ["free", "released", "theirs"]
    assert await lease_of(store, "theirs") == ("a", 230.0)
    assert await lease_of(store, "mine") == ("a", 1000.0)
    assert await store.claim_unfinished("a", 201.0, TTL, steal=True) == []


@pytest.mark.parametrize("steal", [False, True])
async def test_claiming_in_pages_returns_each_run_once_in_order(store: Store, steal: bool) -> None:
    await store.apply([create(f"r{i:02d}", at=100.0 + i) for i in range(25)])
    pages: list[list[str]] = []

    now = 200.0
    while True:
        rows = await store.claim_unfinished("a", now, TTL, 10, steal=steal)
        pages.append(ids(rows))
        if len(rows) < 10:
            break
        now += 1.0  # a real loop reads the clock each time; still well within the TTL
        assert len(pages) < 10, "claim loop does not terminate"

    assert [len(p) for p in pages] == [10, 10, 5]
    assert [r for page in pages for r in page] == [f"r{i:02d}" for i in range(25)]


async def test_concurrent_claims_never_share_a_run(store: Store) -> None:
    await store.apply([create(f"r{i}") for i in range(40)])

    results = await asyncio.gather(
        *(store.claim_unfinished(owner, 200.0, TTL, 7) for owner in "abcdefgh")
    )

    claimed = [run_id for rows in results for run_id in ids(rows)]
    assert sorted(claimed) == sorted(f"r{i}" for i in range(40))
    for owner, rows in zip("abcdefgh", results, strict=True):
        assert all(row.owner == owner for row in rows)


async def test_renew_extends_only_the_owners_unfinished_leases(store: Store) -> None:
    await store.apply(
        [
            create("a1", owner="a", lease_until=130.0),
            create("a2", owner="a", lease_until=120.0),
            create("b1", owner="b", lease_until=130.0),
            create("a-done", owner="a", lease_until=130.0),
            FinishRun("a-done", "succeeded", DONE, 125.0),
        ]
    )

    assert await store.renew_leases("a", 500.0) == 2

    assert await lease_of(store, "a1") == ("a", 500.0)
    assert await lease_of(store, "a2") == ("a", 500.0)
    assert await lease_of(store, "b1") == ("b", 130.0)
    # Finishing a run ends its lease.
    assert await lease_of(store, "a-done") == (None, None)
    assert await store.renew_leases("nobody", 500.0) == 0


async def test_release_frees_the_owners_runs_for_others_at_once(store: Store) -> None:
    await store.apply(
        [
            create("a1", owner="a", lease_until=1000.0),
            create("a2", owner="a", lease_until=1000.0),
            create("b1", owner="b", lease_until=1000.0),
        ]
    )

    assert await store.release_leases("a") == 2

    assert await lease_of(store, "a1") == ("a", None)  # owner kept for the record
    assert await lease_of(store, "b1") == ("b", 1000.0)
    assert ids(await store.claim_unfinished("c", 200.0, TTL)) == ["a1", "a2"]
    assert await store.renew_leases("a", 2000.0) == 0


# --- SQLite: one gateway process per file ------------------------------------------


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "gw.db")


async def test_sqlite_second_open_of_a_file_in_use_fails_until_closed(db_url: str) -> None:
    first = await open_store(db_url)
    assert first.exclusive
    try:
        with pytest.raises(StoreUnavailable, match=rf"in use by another .*\(pid {os.getpid()}\)"):
            await open_store(db_url)
        # The failed open left the holder's store working.
        await first.apply([create("r1")])
    finally:
        await first.close()

    second = await open_store(db_url)
    try:
        assert await second.get_run("r1") is not None
    finally:
        await second.close()


async def test_sqlite_lock_dies_with_a_killed_holder(db_url: str, tmp_path: Path) -> None:
    holder = (
        "import asyncio, sys\n"
        "from gateway.store.sqlite import SqliteStore\n"
        "async def main():\n"
        "    await SqliteStore.open(sys.argv[1])\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        holder,
        db_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        with pytest.raises(StoreUnavailable, match=rf"\(pid {proc.pid}\)"):
            await open_store(db_url)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = await open_store(db_url)
    try:
        assert store.exclusive
        await store.apply([create("r1")])
        assert (tmp_path / "gw.db.lock").read_text().strip() == str(os.getpid())
    finally:
        await store.close()


async def test_sqlite_memory_store_is_exclusive() -> None:
    store = await SqliteStore.open("sqlite:///:memory:")
    try:
        assert store.exclusive
        await store.apply([create("r1")])
        assert ids(await store.claim_unfinished("a", 200.0, TTL, steal=True)) == ["r1"]
    finally:
        await store.close()
