"""A Node.js backend with no SDK (standard library only) resumes like the Python one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route, start_backend
from tests.helpers import assert_eventually


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
    async with http.get(node_backend.url + f"/_counts?run_id={body['run_id']}") as resp:
        counts = (await resp.json())["counts"]
    assert counts == {"step-1": 1, "step-2": 1, "step-3": 1}


async def test_node_backend_sleeps_and_waits_with_raw_calls(
    node_backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(node_backend.url, hold="10s"))
    async with http.post(gw.url("/demo/sleep?seconds=1&n=2")) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["attempt"] == 2
    async with http.post(
        gw.url("/demo/wait?event=approved&order_id=7"), headers={"Prefer": "respond-async"}
    ) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
        run_id = resp.headers["Durable-Run-Id"]

    async def waiting() -> None:
        async with http.get(f"{gw.admin}/v1/runs/{run_id}") as resp:
            assert (await resp.json())["status"] == "suspended"

    await assert_eventually(waiting)
    event = {"name": "approved", "data": {"order_id": "7"}}
    async with http.post(f"{gw.admin}/v1/events", json=event) as resp:
        assert (await resp.json())["matched"] == 1
    async with http.get(location) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["event"]["data"] == {"order_id": "7"}
    async with http.get(node_backend.url + f"/_counts?run_id={run_id}") as resp:
        assert (await resp.json())["counts"] == {"step-1": 1, "step-2": 1}
