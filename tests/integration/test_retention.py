"""Retention: finished runs and their idempotency keys disappear after `storage.retention`."""

from __future__ import annotations

import aiohttp

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import assert_eventually


async def test_finished_runs_and_keys_are_purged(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url), storage="retention: 1s")
    headers = {"Idempotency-Key": "short-lived", "Prefer": "respond-async"}
    async with http.post(gw.url("/demo/steps?n=1"), headers=headers) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
        first_run = resp.headers["Durable-Run-Id"]
    async with http.get(location) as resp:
        assert resp.status == 200

    async def purged() -> None:
        async with http.get(location) as resp:
            assert resp.status == 404

    await assert_eventually(purged, within=20)
    async with http.post(gw.url("/demo/steps?n=1"), headers=headers) as resp:
        assert resp.status == 202  # the key is free again: a new run, not a replay
        assert resp.headers["Durable-Run-Id"] != first_run
    assert "purged" in gw.logs()
