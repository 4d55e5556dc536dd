"""Idempotency-Key: replay, 422 on a different request, 400 when required, duplicates attach."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import all_counts, counts

pytestmark = pytest.mark.both_stores


async def test_same_key_replays_the_stored_response(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    headers = {"Idempotency-Key": '"order-42"'}
    async with http.post(gw.url("/demo/steps?n=2"), data=b"{}", headers=headers) as resp:
        assert resp.status == 200
        assert "Idempotent-Replayed" not in resp.headers
        first = await resp.json()
    for key in ('"order-42"', "order-42"):  # quoted and bare are the same key
        async with http.post(
            gw.url("/demo/steps?n=2"), data=b"{}", headers={"Idempotency-Key": key}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Idempotent-Replayed"] == "true"
            assert await resp.json() == first
    assert await counts(http, backend, first["run_id"]) == {"step-1": 1, "step-2": 1}


async def test_same_key_different_request_is_422(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    headers = {"Idempotency-Key": "k1"}
    async with http.post(gw.url("/demo/echo"), data=b"one", headers=headers) as resp:
        assert resp.status == 200
    async with http.post(gw.url("/demo/echo"), data=b"two", headers=headers) as resp:
        assert resp.status == 422
        assert resp.content_type == "application/problem+json"
    async with http.post(gw.url("/demo/echo?x=1"), data=b"one", headers=headers) as resp:
        assert resp.status == 422
    async with http.post(gw.url("/demo/echo"), data=b"one", headers=headers) as resp:
        assert resp.status == 200  # a 422 is never stored as the key's result
        assert resp.headers["Idempotent-Replayed"] == "true"


async def test_required_key_missing_is_400_and_not_stored(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, idempotency="required"))
    async with http.post(gw.url("/demo/echo")) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
    async with http.post(gw.url("/demo/echo"), headers={"Idempotency-Key": "x" * 256}) as resp:
        assert resp.status == 400
    async with http.post(gw.url("/demo/echo"), headers={"Idempotency-Key": "ok"}) as resp:
        assert resp.status == 200


async def test_idempotency_off_ignores_the_header(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, idempotency="off"))
    run_ids = set()
    for _ in range(2):
        async with http.post(gw.url("/demo/echo"), headers={"Idempotency-Key": "same"}) as resp:
            assert "Idempotent-Replayed" not in resp.headers
            run_ids.add(resp.headers["Durable-Run-Id"])
    assert len(run_ids) == 2


async def test_concurrent_duplicates_attach_to_one_run(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    headers = {"Idempotency-Key": "burst"}

    async def one() -> tuple[str, str | None]:
        async with http.post(
            gw.url("/demo/steps?n=2&pause_ms=200"), data=b"{}", headers=headers
        ) as resp:
            assert resp.status == 200
            return (await resp.json())["run_id"], resp.headers.get("Idempotent-Replayed")

    results = await asyncio.gather(*(one() for _ in range(10)))
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(1 for _, replayed in results if replayed == "true") == 9
    assert await all_counts(http, backend) == {results[0][0]: {"step-1": 1, "step-2": 1}}


async def test_key_survives_a_restart(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    headers = {"Idempotency-Key": "persist"}
    async with http.post(gw.url("/demo/steps?n=1"), headers=headers) as resp:
        first = await resp.json()
    gw.restart()
    async with aiohttp.ClientSession() as fresh:  # no keep-alive connection to the old process
        async with fresh.post(gw.url("/demo/steps?n=1"), headers=headers) as resp:
            assert resp.headers["Idempotent-Replayed"] == "true"
            assert await resp.json() == first


async def test_keys_are_scoped_to_the_caller(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Two callers sending one key with one request get a run each, and each its own
    response; a caller repeating itself gets its stored one."""
    gw = gateway_factory(durable_route(backend.url))

    async def post(token: str | None) -> tuple[str, str | None, str | None]:
        headers = {"Idempotency-Key": "shared-key"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(gw.url("/demo/echo"), data=b"{}", headers=headers) as resp:
            assert resp.status == 200
            echo = await resp.json()
            seen = {k.lower(): v for k, v in echo["headers"].items()}.get("authorization")
            return resp.headers["Durable-Run-Id"], seen, resp.headers.get("Idempotent-Replayed")

    alice, seen, replayed = await post("alice")
    assert (seen, replayed) == ("Bearer alice", None)
    bob, seen, replayed = await post("bob")
    assert bob != alice
    assert (seen, replayed) == ("Bearer bob", None)  # never alice's response
    anonymous, seen, replayed = await post(None)
    assert anonymous not in (alice, bob)
    assert (seen, replayed) == (None, None)
    for token, run_id in (("alice", alice), ("bob", bob), (None, anonymous)):
        again, seen, replayed = await post(token)
        assert (again, replayed) == (run_id, "true")
        assert seen == (None if token is None else f"Bearer {token}")


async def test_scope_names_what_else_identifies_a_caller(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, idempotency_scope="[header:authorization, header:x-tenant]")
    )
    run_ids = []
    for tenant in ("a", "b", "a"):
        headers = {"Idempotency-Key": "k", "Authorization": "Bearer same", "X-Tenant": tenant}
        async with http.post(gw.url("/demo/echo"), headers=headers) as resp:
            assert resp.status == 200
            run_ids.append(resp.headers["Durable-Run-Id"])
    assert run_ids[0] != run_ids[1] and run_ids[2] == run_ids[0]
