"""A 1 GiB response through a durable route: streamed with bounded memory, the first
`max_response` of it kept, the rest streamed to the client only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, durable_route
from tests.helpers import until_status

MIB = 1024 * 1024
SIZE = int(os.environ.get("BIG_MIB", "1024")) * MIB
PIECE = bytes(range(256)) * 1024  # 256 KiB, sent again and again


async def big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    size = int(request.query.get("mib", SIZE // MIB)) * MIB
    for _ in range(size // len(PIECE)):
        await response.write(PIECE)
    await response.write_eof()
    return response


@pytest.fixture
async def big_backend() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/big/{tail:.*}", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def rss(pid: int, field: str) -> int:
    """A memory figure of a process from /proc, in bytes (VmRSS now, VmHWM its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.parametrize("durable", [True, False])
async def test_a_1_gib_response_streams_with_bounded_memory(
    big_backend: str, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, durable: bool
) -> None:
    gw = gateway_factory(
        durable_route(big_backend, name="big", path="/big/*", durable=str(durable).lower())
    )
    pid = gw.proc.popen.pid
    async with http.get(gw.url("/big/warm?mib=1")) as resp:  # warm the route: pools, imports
        assert len(await resp.read()) == MIB
    baseline = rss(pid, "VmRSS")
    received = 0
    async with http.get(gw.url("/big/x")) as resp:
        assert resp.status == 200
        headers = resp.headers
        async for piece in resp.content.iter_chunked(MIB):
            received += len(piece)
    assert received == SIZE
    growth = rss(pid, "VmHWM") - baseline
    assert growth < 128 * MIB, f"the gateway grew by {growth / MIB:.0f} MiB"  # generous
    if not durable:
        assert "Durable-Run-Id" not in headers
        return
    run = await until_status(http, gw, headers["Durable-Run-Id"], "succeeded")
    assert run["response"]["body_kept"] is False  # past the default max_response, 64MiB
    async with http.get(headers["Durable-Result"]) as resp:
        assert resp.status == 410
