"""SIGKILL the gateway mid-flight and restart it: every run completes, no acked step reruns."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import accept, all_counts, assert_eventually, final

pytestmark = pytest.mark.both_stores

RETRY = "{max_attempts: 10, initial_backoff: 4s, max_backoff: 4s, jitter: 0}"


async def test_sigkill_mid_step_and_in_backoff_then_restart(
    sync_backend: Backend,
    gateway_factory: GatewayFactory,
    gateway_store: str,
    http: aiohttp.ClientSession,
) -> None:
    """On SQLite the restarted process recovers the runs at start; on PostgreSQL it is a
    new node (another default node id), which takes the runs over once the killed node's
    database session has ended."""
    gw = gateway_factory(
        durable_route(sync_backend.url, retry=RETRY, hold="0s"), storage="durability: sync"
    )
    mid_step = [
        (await accept(http, gw.url(f"/demo/steps?n=3&pause_ms=3000&i={i}")))[1] for i in range(6)
    ]
    in_backoff = [
        (await accept(http, gw.url(f"/demo/steps?n=3&fail_at=2&i={i}")))[1] for i in range(6)
    ]

    async def all_past_step_1() -> None:
        """Step 1 of every run is committed (so under sync, acknowledged or about to be)."""
        async with http.get(gw.admin + "/v1/runs?limit=100") as resp:
            run_ids = [run["run_id"] for run in (await resp.json())["runs"]]
        assert len(run_ids) == 12
        for run_id in run_ids:
            async with http.get(f"{gw.admin}/v1/runs/{run_id}") as resp:
                steps = [step["step_id"] for step in (await resp.json())["steps"]]
            assert "step-1" in steps, run_id

    await assert_eventually(all_past_step_1)
    gw.kill()
    gw.launch()

    finals = [final(http, loc, within=40, expect=200) for loc in mid_step + in_backoff]
    bodies = [body for _, body in await asyncio.gather(*finals)]
    assert all(body["attempt"] >= 2 for body in bodies)
    counts = await all_counts(http, sync_backend)
    for body in bodies:
        assert counts[body["run_id"]]["step-1"] == 1, counts[body["run_id"]]
    async with http.get(sync_backend.url + "/_violations") as resp:
        assert (await resp.json())["violations"] == []
    if gateway_store == "sqlite":
        assert "recovered 12 unfinished runs" in gw.logs()
    else:
        assert gw.logs().count("taking over a run (node gone)") == 12


async def test_result_urls_of_finished_runs_survive_a_restart(
    sync_backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(sync_backend.url), storage="durability: sync")
    _, location = await accept(http, gw.url("/demo/steps?n=2"))
    answer = await final(http, location, within=40, expect=200)
    gw.kill()
    gw.launch()
    assert await final(http, location, within=40, expect=200) == answer
