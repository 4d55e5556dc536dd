"""A handler that fails part-way resumes at the failed step; final failures are final."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import counts

FAST_RETRY = "{max_attempts: 4, initial_backoff: 50ms, max_backoff: 200ms}"


@pytest.mark.both_stores
@pytest.mark.parametrize("mode", ["500", "drop", "503"])
async def test_failure_at_step_2_resumes_with_step_1_run_once(
    mode: str, backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=FAST_RETRY))
    async with http.post(gw.url(f"/demo/steps?n=3&fail_at=2&mode={mode}&retry_after=1")) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    assert body["attempt"] == 2
    assert await counts(http, backend, body["run_id"]) == {"step-1": 1, "step-2": 1, "step-3": 1}


async def test_attempt_timeout_resumes(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=FAST_RETRY, attempt_timeout="500ms"))
    async with http.post(gw.url("/demo/steps?n=3&fail_at=2&mode=hang")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["attempt"] == 2
    assert await counts(http, backend, body["run_id"]) == {"step-1": 1, "step-2": 1, "step-3": 1}


@pytest.mark.both_stores
async def test_retry_after_is_honoured(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=FAST_RETRY))
    import time

    began = time.monotonic()
    async with http.post(gw.url("/demo/steps?n=1&fail_at=1&mode=503&retry_after=1")) as resp:
        assert resp.status == 200
    # The configured backoff is at most 200ms; only the upstream's Retry-After explains 1s.
    assert time.monotonic() - began >= 0.95


async def test_4xx_is_final(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=FAST_RETRY))
    async with http.post(gw.url("/demo/steps?n=2&fail_at=2&mode=400&fail_times=9")) as resp:
        assert resp.status == 400
        run_id = resp.headers["Durable-Run-Id"]
    assert await counts(http, backend, run_id) == {"step-1": 1}


async def test_durable_retry_no_is_final(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=FAST_RETRY))
    async with http.post(gw.url("/demo/steps?n=2&fail_at=1&mode=noretry&fail_times=9")) as resp:
        assert resp.status == 500
        assert resp.headers["Durable-Run-Id"]


@pytest.mark.both_stores
async def test_attempts_exhausted_gives_the_last_response(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=FAST_RETRY))
    async with http.post(gw.url("/demo/steps?n=3&fail_at=2&mode=500&fail_times=99")) as resp:
        assert resp.status == 500
        run_id = resp.headers["Durable-Run-Id"]
    assert await counts(http, backend, run_id) == {"step-1": 1}
    async with http.get(gw.admin + "/metrics") as resp:
        text = await resp.text()
    assert 'durable_attempts_total{outcome="response",route="demo"} 4.0' in text


async def test_upstream_down_is_502_problem(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    from tests.helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(durable_route(dead, retry="{max_attempts: 2, initial_backoff: 10ms}"))
    async with http.get(gw.url("/demo/anything")) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert problem["run_id"] == resp.headers["Durable-Run-Id"]
    assert "connect" in problem["detail"].lower()
