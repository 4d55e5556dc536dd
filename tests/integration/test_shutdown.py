"""SIGTERM: stop accepting, let in-flight attempts finish, hand held clients their result URL."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import all_counts, assert_eventually, counts

pytestmark = pytest.mark.both_stores


async def test_sigterm_lets_the_in_flight_attempt_finish(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    request = asyncio.ensure_future(http.post(gw.url("/demo/steps?n=2&pause_ms=700")))

    async def started() -> None:
        assert await all_counts(http, backend), "no step yet"

    await assert_eventually(started)
    code = await asyncio.to_thread(gw.proc.stop, signal.SIGTERM)
    async with await request as resp:
        assert resp.status == 200
        assert len((await resp.json())["results"]) == 2
    assert code == 0


async def test_sigterm_redirects_a_held_client_and_the_run_resumes_on_restart(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    slow = "{max_attempts: 3, initial_backoff: 2s, max_backoff: 2s, jitter: 0}"
    gw = gateway_factory(durable_route(backend.url, retry=slow, hold="30s"))
    request = asyncio.ensure_future(
        http.post(gw.url("/demo/steps?n=2&fail_at=2"), allow_redirects=False)
    )

    async def in_backoff() -> None:
        async with http.get(gw.admin + "/metrics") as resp:
            assert 'durable_retries_total{route="demo"} 1.0' in await resp.text()

    await assert_eventually(in_backoff)
    assert await asyncio.to_thread(gw.proc.stop, signal.SIGTERM) == 0
    async with await request as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    gw.launch()
    async with http.get(location) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["attempt"] == 2
    assert await counts(http, backend, body["run_id"]) == {"step-1": 1, "step-2": 1}
