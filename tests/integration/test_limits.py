"""Route rate limits answer 429 with Retry-After; concurrency limits queue attempts."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import Backend, GatewayFactory, HeldBackend, durable_route


async def test_rate_limit_is_429_with_retry_after(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, rate_limit="{rate: 1/m, burst: 2, key: 'header:x-user'}")
    )
    for _ in range(2):
        async with http.get(gw.url("/demo/echo"), headers={"X-User": "a"}) as resp:
            assert resp.status == 200
    async with http.get(gw.url("/demo/echo"), headers={"X-User": "a"}) as resp:
        assert resp.status == 429
        assert resp.content_type == "application/problem+json"
        assert int(resp.headers["Retry-After"]) >= 1
    async with http.get(gw.url("/demo/echo"), headers={"X-User": "b"}) as resp:
        assert resp.status == 200  # another key has its own bucket


async def test_concurrency_limit_queues_attempts(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(held.url, concurrency="{limit: 1}"))
    first = asyncio.ensure_future(http.get(gw.url("/demo/a")))
    second = asyncio.ensure_future(http.get(gw.url("/demo/b")))
    await asyncio.wait_for(held.attempts.get(), 10)
    try:
        await asyncio.wait_for(held.attempts.get(), 0.5)
        raise AssertionError("a second attempt ran while the only slot was taken")
    except TimeoutError:
        pass
    await held.answers.put(200)
    await asyncio.wait_for(held.attempts.get(), 10)  # the queued one runs once the slot frees
    await held.answers.put(200)
    for task in (first, second):
        async with await task as resp:
            assert resp.status == 200


async def test_a_new_request_queued_past_queue_timeout_gets_503(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(held.url, concurrency="{limit: 1, queue_timeout: 300ms}"))
    first = asyncio.ensure_future(http.get(gw.url("/demo/a")))
    await asyncio.wait_for(held.attempts.get(), 10)
    async with http.get(gw.url("/demo/b")) as resp:
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("queue-timeout")
    await held.answers.put(200)
    async with await first as resp:
        assert resp.status == 200
