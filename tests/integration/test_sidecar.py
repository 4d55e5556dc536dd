"""The sidecar API against a live run: auth, first write wins, stale attempts, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from tests.conftest import Gateway, GatewayFactory, HeldBackend, durable_route
from tests.helpers import assert_eventually, send_after_continue, send_head


async def start_run(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession, **route: str
) -> tuple[str, dict[str, str], asyncio.Task[aiohttp.ClientResponse], Gateway]:
    gw = gateway_factory(
        durable_route(held.url, retry="{max_attempts: 3, initial_backoff: 10ms}", **route)
    )
    request = asyncio.ensure_future(http.post(gw.url("/demo/x"), data=b"{}"))
    headers = await asyncio.wait_for(held.attempts.get(), 10)
    return headers["Durable-Sidecar"], headers, request, gw


def bearer(headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": "Bearer " + headers["Durable-Token"]}


@pytest.mark.both_stores
async def test_step_writes_first_write_wins(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, headers, request, _ = await start_run(gateway_factory, held, http)
    auth = bearer(headers)
    async with http.get(f"{base}/steps/a", headers=auth) as resp:
        assert resp.status == 404
    async with http.put(f"{base}/steps/a", json={"output": {"n": 1, "s": "x"}}, headers=auth) as r:
        assert r.status == 201
    async with http.put(f"{base}/steps/a", json={"output": {"s": "x", "n": 1}}, headers=auth) as r:
        assert r.status == 200  # the same output again (key order does not matter)
    async with http.put(f"{base}/steps/a", json={"output": {"n": 2}}, headers=auth) as r:
        assert r.status == 409
        assert r.content_type == "application/problem+json"
    async with http.put(f"{base}/steps/b?durable=sync", json={"output": [1, 2]}, headers=auth) as r:
        assert r.status == 201
    async with http.put(f"{base}/steps/c", json={"error": {"message": "boom"}}, headers=auth) as r:
        assert r.status == 200
    async with http.get(f"{base}/steps/a", headers=auth) as resp:
        assert await resp.json() == {"output": {"n": 1, "s": "x"}}
    async with http.get(f"{base}/steps", headers=auth) as resp:
        assert await resp.json() == {
            "steps": {"a": {"output": {"n": 1, "s": "x"}}, "b": {"output": [1, 2]}}
        }
    await held.answers.put(200)
    (await request).release()


@pytest.mark.both_stores
async def test_retry_gets_completed_steps_and_old_token_is_stale(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, first, request, gw = await start_run(gateway_factory, held, http)
    async with http.put(f"{base}/steps/one", json={"output": "done"}, headers=bearer(first)) as r:
        assert r.status == 201
    await held.answers.put(500)
    second = await asyncio.wait_for(held.attempts.get(), 10)
    assert second["Durable-Attempt"] == "2"
    from step_protocol.wire import decode_steps

    assert decode_steps(second["Durable-Steps"]) == {"one": "done"}
    async with http.put(f"{base}/steps/two", json={"output": 2}, headers=bearer(first)) as r:
        assert r.status == 409  # a zombie attempt cannot race its successor
        assert (await r.json())["type"].endswith("stale-attempt")
    async with http.get(f"{base}/steps/one", headers=bearer(first)) as r:
        assert r.status == 200  # reads stay open to the older token
    async with http.put(f"{base}/steps/two", json={"output": 2}, headers=bearer(second)) as r:
        assert r.status == 201
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200

    async def out_of_memory() -> None:
        async with http.get(gw.admin + "/metrics") as r:
            assert "durable_runs_in_flight 0.0" in await r.text()

    await assert_eventually(out_of_memory)  # finished, committed, known to the store alone
    put = http.put(f"{base}/steps/three", json={"output": 3}, headers=bearer(second))
    async with put as r:  # SPEC §5: "or the run has finished"
        assert r.status == 409, r.status
        assert (await r.json())["type"].endswith("stale-attempt")


async def test_sidecar_auth(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, headers, request, _ = await start_run(gateway_factory, held, http)
    async with http.put(f"{base}/steps/a", json={"output": 1}) as r:
        assert r.status == 401
    async with http.put(
        f"{base}/steps/a",
        json={"output": 1},
        headers={"Authorization": "Bearer 1.AAAAAAAAAAAAAAAAAAAAAA"},
    ) as r:
        assert r.status == 403
    other = base.rsplit("/", 1)[0] + "/someoneelsesrun"
    async with http.put(f"{other}/steps/a", json={"output": 1}, headers=bearer(headers)) as r:
        assert r.status == 403  # a token never opens another run
    await held.answers.put(200)
    (await request).release()


async def test_sidecar_rejects_bad_input_and_oversize(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, headers, request, _ = await start_run(
        gateway_factory, held, http, max_step_output="1KiB", max_steps="2"
    )
    auth = bearer(headers)
    async with http.put(f"{base}/steps/a", data=b"{not json", headers=auth) as r:
        assert r.status == 400
        assert r.content_type == "application/problem+json"
    async with http.put(f"{base}/steps/a", json={"nothing": 1}, headers=auth) as r:
        assert r.status == 400
    async with http.put(f"{base}/steps/{'x' * 257}", json={"output": 1}, headers=auth) as r:
        assert r.status == 400
    async with http.put(f"{base}/steps/{'x' * 256}", json={"output": 1}, headers=auth) as r:
        assert r.status == 201
    async with http.put(f"{base}/steps/big", json={"output": "y" * 2000}, headers=auth) as r:
        assert r.status == 413
    async with http.get(f"{base}/steps/big", headers=auth) as r:
        assert r.status == 404  # nothing stored
    async with http.put(f"{base}/steps/second", json={"output": 2}, headers=auth) as r:
        assert r.status == 201
    async with http.put(f"{base}/steps/third", json={"output": 3}, headers=auth) as r:
        assert r.status == 413  # max_steps
    await held.answers.put(200)
    (await request).release()


@pytest.mark.both_stores
async def test_large_steps_are_fetched_not_inlined(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, first, request, _ = await start_run(gateway_factory, held, http)
    big = "z" * 5000
    async with http.put(f"{base}/steps/big", json={"output": big}, headers=bearer(first)) as r:
        assert r.status == 201
    await held.answers.put(503)
    second = await asyncio.wait_for(held.attempts.get(), 10)
    assert second["Durable-Steps"] == "fetch"
    async with http.get(f"{base}/steps", headers=bearer(second)) as r:
        assert await r.json() == {"steps": {"big": {"output": big}}}
    await held.answers.put(200)
    (await request).release()


async def test_sidecar_paths_methods_and_encoded_step_ids(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, headers, request, _ = await start_run(gateway_factory, held, http, max_step_output="1KiB")
    auth = bearer(headers)
    # A step id's percent-encoding is decoded, a slash included, as one path segment.
    encoded = URL(f"{base}/steps/order%2F7%3Acharge%20one", encoded=True)
    async with http.put(encoded, json={"output": 1}, headers=auth) as r:
        assert r.status == 201
    async with http.get(f"{base}/steps", headers=auth) as r:
        assert (await r.json())["steps"] == {"order/7:charge one": {"output": 1}}
    async with http.head(encoded, headers=auth) as r:
        assert r.status == 200
    # Escapes that are not UTF-8 stay as sent, so two such ids never become one.
    for raw in ("%FF", "%FE"):
        async with http.put(
            URL(f"{base}/steps/{raw}", encoded=True), json={"output": raw}, headers=auth
        ) as r:
            assert r.status == 201
    async with http.get(f"{base}/steps", headers=auth) as r:
        steps = (await r.json())["steps"]
    assert steps["%FF"] == {"output": "%FF"} and steps["%FE"] == {"output": "%FE"}
    for method, path, status in [
        ("GET", f"{base}/stepz", 404),
        ("GET", f"{base}/steps/a/b/c", 404),
        ("POST", f"{base}/steps/a/nap", 404),
        ("GET", base.rsplit("/v1/", 1)[0] + "/v2/x", 404),
        ("DELETE", f"{base}/steps/a", 405),
        ("PUT", f"{base}/steps", 405),
        ("GET", f"{base}/steps/a/sleep", 405),
    ]:
        async with http.request(method, path, headers=auth) as r:
            assert r.status == status, (method, path)
            assert r.content_type == "application/problem+json"
            if status == 405:
                assert r.headers["Allow"]
    async with http.put(f"{base}/steps", headers=auth) as r:
        assert r.headers["Allow"] == "GET,HEAD"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 1000  # no Content-Length: the limit is found while reading

    async with http.put(f"{base}/steps/chunked", data=chunks(), headers=auth) as r:
        assert r.status == 413
    await held.answers.put(200)
    (await request).release()


async def test_sidecar_answers_expect_100_continue(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, headers, request, _ = await start_run(gateway_factory, held, http, max_step_output="1KiB")
    body = b'{"output": "after the 100"}'
    ask = {**bearer(headers), "Content-Type": "application/json"}
    final, _ = await send_after_continue(f"{base}/steps/a", "PUT", ask, body)
    assert final.startswith(b"HTTP/1.1 201 ")
    too_big = {**ask, "Expect": "100-continue", "Content-Length": "5000"}
    _, writer, head = await send_head(f"{base}/steps/b", "PUT", too_big)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")  # refused before the body is sent
    await held.answers.put(200)
    (await request).release()
