"""One gateway on PostgreSQL: the database restarting mid-load, and what the database keeps
for every node (the generated secret)."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import accept, all_counts, assert_eventually, final
from tests.postgres import PgServer


async def test_the_database_restarting_mid_load(
    sync_backend: Backend,
    gateway_factory: GatewayFactory,
    pg_server: PgServer,
    pg_url: str,
    http: aiohttp.ClientSession,
) -> None:
    """Durable routes answer 503 problems with Retry-After while it is down, plain routes
    keep serving, no step acknowledged under sync is lost or run again, and the node
    recovers by itself."""
    plain = durable_route(sync_backend.url, name="plain", path="/demo/echo", durable="false")
    routes = durable_route(sync_backend.url, retry="{max_attempts: 20, max_backoff: 1s}") + plain
    gw = gateway_factory(routes, url=pg_url, storage="durability: sync")
    runs = [await accept(http, gw.url(f"/demo/steps?n=4&pause_ms=400&i={i}")) for i in range(5)]
    pg_server.stop()
    try:

        async def refused() -> None:
            url, prefer = gw.url("/demo/steps?n=1"), {"Prefer": "respond-async"}
            async with http.post(url, headers=prefer, allow_redirects=False) as resp:
                assert resp.status == 503, resp.status
                assert resp.content_type == "application/problem+json"
                assert resp.headers["Retry-After"] == "1"

        await assert_eventually(refused, within=30)
        async with http.get(gw.url("/demo/echo")) as resp:  # nothing waits on storage
            assert resp.status == 200
    finally:
        pg_server.start()

    async def serving() -> None:
        async with http.post(gw.url("/demo/steps?n=1")) as resp:
            assert resp.status == 200, await resp.text()

    await assert_eventually(serving, within=30)
    finals = await asyncio.gather(*(final(http, loc, within=60) for _, loc in runs))
    assert [status for status, _ in finals] == [200] * 5
    counts = await all_counts(http, sync_backend)
    assert all(counts[run_id]["step-4"] >= 1 for run_id, _ in runs)
    async with http.get(sync_backend.url + "/_violations") as resp:
        assert (await resp.json())["violations"] == []  # acknowledged steps never re-ran
    assert "store writes recovered" in gw.logs()


async def test_a_generated_secret_is_shared_by_every_node(
    backend: Backend, gateway_factory: GatewayFactory, pg_url: str, http: aiohttp.ClientSession
) -> None:
    """No `security.secret`: the first node generates one and keeps it in the database,
    so a result URL one node signed works on the other."""
    a = gateway_factory(durable_route(backend.url), url=pg_url)
    b = gateway_factory(durable_route(backend.url), url=pg_url)
    _, location = await accept(http, a.url("/demo/steps?n=1"))
    status, _ = await final(http, location.replace(a.ingress, b.ingress))
    assert status == 200

    async def forged() -> None:
        async with http.get(location.replace("token=", "token=x")) as resp:
            assert resp.status == 404

    await assert_eventually(forged)
