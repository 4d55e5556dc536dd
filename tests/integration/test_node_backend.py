"""A Node.js backend with no SDK (standard library only) resumes like the Python one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route, start_backend
from tests.helpers import accept, counts, post_event, until_status

pytestmark = pytest.mark.both_stores


@pytest.fixture
def node_backend(tmp_path: Path) -> Iterator[Backend]:
    b = start_backend("node", tmp_path)
    yield b
    b.proc.stop()


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_node_backend_resumes_at_the_failed_step(
    mode: str,
    node_backend: Backend,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = gateway_factory(durable_route(node_backend.url, retry="{initial_backoff: 20ms}"))
    async with http.post(gw.url(f"/demo/steps?n=3&fail_at=3&mode={mode}")) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["attempt"] == 2
    steps = {"step-1": 1, "step-2": 1, "step-3": 1}
    assert await counts(http, node_backend, body["run_id"]) == steps


async def test_node_backend_sleeps_and_waits_with_raw_calls(
    node_backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(node_backend.url, hold="10s"))
    async with http.post(gw.url("/demo/sleep?seconds=1&n=2")) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["attempt"] == 2
    run_id, location = await accept(http, gw.url("/demo/wait?event=approved&order_id=7"))
    await until_status(http, gw, run_id, "suspended")
    event = await post_event(http, gw, name="approved", data={"order_id": "7"})
    assert event["matched"] == 1
    async with http.get(location) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["event"]["data"] == {"order_id": "7"}
    assert await counts(http, node_backend, run_id) == {"step-1": 1, "step-2": 1}
