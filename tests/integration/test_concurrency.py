"""Many concurrent requests with random failures all succeed; no checkpointed step re-runs."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import all_counts

pytestmark = pytest.mark.both_stores

REQUESTS = 200


async def test_200_concurrent_requests_with_random_failures(
    sync_backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(
            sync_backend.url,
            retry="{max_attempts: 5, initial_backoff: 20ms, max_backoff: 100ms}",
            hold="60s",
        )
    )
    rng = random.Random(7)
    modes = ["500", "drop", "503"]

    async def one(i: int) -> tuple[str, int]:
        query = "n=4"
        if rng.random() < 0.6:
            query += f"&fail_at={rng.randint(1, 4)}&mode={rng.choice(modes)}&retry_after=0"
            query += f"&fail_times={rng.randint(1, 3)}"
        async with http.post(gw.url(f"/demo/steps?{query}")) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            return body["run_id"], body["attempt"]

    results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    assert len({run_id for run_id, _ in results}) == REQUESTS
    assert sum(1 for _, attempt in results if attempt > 1) > REQUESTS // 3
    counts = await all_counts(http, sync_backend)
    for run_id, _ in results:
        assert counts[run_id] == {f"step-{i}": 1 for i in range(1, 5)}, run_id
