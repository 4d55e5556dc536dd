"""A Node.js backend with no SDK (standard library only) resumes like the Python one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route, start_backend


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
