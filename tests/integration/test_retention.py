"""Retention: finished runs and their idempotency keys disappear after `storage.retention`."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import accept, assert_eventually

pytestmark = pytest.mark.both_stores


async def test_finished_runs_and_keys_are_purged(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url), storage="retention: 1s")
    key = {"Idempotency-Key": "short-lived"}
    first_run, location = await accept(http, gw.url("/demo/steps?n=1"), key)
    async with http.get(location) as resp:
        assert resp.status == 200

    async def purged() -> None:
        async with http.get(location) as resp:
            assert resp.status == 404

    await assert_eventually(purged, within=20)
    second_run, _ = await accept(http, gw.url("/demo/steps?n=1"), key)
    assert second_run != first_run  # the key is free again: a new run, not a replay
    assert "purged" in gw.logs()
