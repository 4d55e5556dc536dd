"""Streamed responses that survive failures (DESIGN.md, "Streaming responses").

A real gateway process in front of a streaming backend served by the test over a real
socket: the backend breaks its first attempt off mid-body where the test says, and its
retries stream the same bytes, or (`diverge`) others.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, durable_route
from tests.helpers import assert_eventually, until_status

FAST_RETRY = "{max_attempts: 4, initial_backoff: 50ms, max_backoff: 100ms, jitter: 0}"


def sse_body(n: int, version: int = 1, pad: int = 0) -> bytes:
    """What the backend streams as SSE: `n` events with ids 0..n-1."""
    return b"".join(
        f"id: {i}\ndata: token-{i}-v{version}{'.' * pad}\n\n".encode() for i in range(n)
    )


def text_body(n: int, version: int = 1, pad: int = 0) -> bytes:
    return b"".join(f"line {i} v{version}{'.' * pad}\n".encode() for i in range(n))


@dataclass
class Streamer:
    """A backend whose first attempt breaks off after `break_at` bytes (query), and whose
    later attempts stream the same body, or another one with `diverge=1`."""

    url: str = ""
    attempts: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        query = request.query
        attempt = int(request.headers.get("Durable-Attempt", "1"))
        n, pad = int(query.get("n", "10")), int(query.get("pad", "0"))
        version = 2 if attempt > 1 and query.get("diverge") == "1" else 1
        sse = query.get("type", "sse") == "sse"
        body = (sse_body if sse else text_body)(n, version, pad)
        break_at = int(query.get("break_at", "-1"))
        if attempt > 1 and query.get("status2"):
            return web.Response(status=int(query["status2"]), text="other")
        gap = float(query.get("gap_ms", "0")) / 1000
        response = web.StreamResponse()
        response.content_type = "text/event-stream" if sse else "text/plain"
        await response.prepare(request)
        piece = max(1, len(body) // n)
        end = break_at if attempt == 1 and break_at >= 0 else len(body)
        for start in range(0, end, piece):
            await response.write(body[start : min(start + piece, end)])
            if gap:
                await asyncio.sleep(gap)
        if end < len(body):
            assert request.transport is not None
            request.transport.abort()  # the body breaks off
            return response
        await response.write_eof()
        return response


@pytest.fixture
async def streamer() -> AsyncIterator[Streamer]:
    backend = Streamer()
    app = web.Application()
    app.router.add_get("/s/{tail:.*}", backend.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    backend.url = str(server.make_url("")).rstrip("/")
    yield backend
    await server.close()


def route(streamer: Streamer, **settings: str) -> str:
    return durable_route(streamer.url, name="s", path="/s/*", retry=FAST_RETRY, **settings)


@pytest.mark.both_stores
@pytest.mark.parametrize("kind", ["sse", "text"])
@pytest.mark.parametrize(
    "break_at",
    [0, 7, 24, 38, 90],  # the head only, mid-event, at an event's end, later, near the end
)
async def test_a_stream_broken_mid_body_resumes_without_a_seam(
    streamer: Streamer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    kind: str,
    break_at: int,
) -> None:
    gw = gateway_factory(route(streamer))
    expected = (sse_body if kind == "sse" else text_body)(10)
    assert break_at < len(expected)
    async with http.get(gw.url(f"/s/x?type={kind}&break_at={break_at}")) as resp:
        assert resp.status == 200
        body = await resp.read()
        run_id, result = resp.headers["Durable-Run-Id"], resp.headers["Durable-Result"]
    assert body == expected
    assert streamer.attempts == 2
    run = await until_status(http, gw, run_id, "succeeded")
    assert run["attempt"] == 2
    async with http.get(result) as resp:
        assert resp.status == 200
        assert await resp.read() == expected
    async with http.get(gw.admin + "/metrics") as resp:
        resumed = 'durable_stream_retries_total{outcome="resumed",route="s"} 1.0'
        assert resumed in await resp.text()


@pytest.mark.both_stores
async def test_a_divergent_sse_retry_resets_the_stream_and_streams_the_new_body(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    first, second = sse_body(10), sse_body(10, version=2)
    async with http.get(gw.url("/s/x?break_at=30&diverge=1")) as resp:
        body = await resp.read()
        result = resp.headers["Durable-Result"]
    # What the first attempt sent, the event that ended mid-way closed, the reset, and
    # the new body from its start.
    reset = b"event: durable-reset\ndata: " + orjson.dumps({"attempt": 2, "result": result})
    assert body == first[:30] + b"\n\n" + reset + b"\n\n" + second
    async with http.get(result) as resp:
        assert await resp.read() == second
    assert "attempt 2 diverged from the 30 bytes streamed before" in gw.logs()


@pytest.mark.both_stores
async def test_a_divergent_retry_of_another_type_aborts_the_response(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    async with http.get(gw.url("/s/x?type=text&break_at=30&diverge=1")) as resp:
        result = resp.headers["Durable-Result"]
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with http.get(result) as resp:
        assert await resp.read() == text_body(10, version=2)


@pytest.mark.both_stores
async def test_an_sse_retry_with_another_status_resets_and_ends_the_stream(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    async with http.get(gw.url("/s/x?break_at=48&status2=404")) as resp:
        body = await resp.read()
        result = resp.headers["Durable-Result"]
    reset = b"event: durable-reset\ndata: " + orjson.dumps({"attempt": 2, "result": result})
    assert body == sse_body(10)[:48] + reset + b"\n\n"  # 48 bytes end the second event
    async with http.get(result) as resp:
        assert resp.status == 404
        assert await resp.read() == b"other"


@pytest.mark.both_stores
async def test_late_joiners_get_the_bytes_so_far_then_follow_live(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    expected = sse_body(30)
    async with http.get(gw.url("/s/x?n=30&gap_ms=40&break_at=200")) as resp:
        result = resp.headers["Durable-Result"]
        first = await resp.content.readexactly(100)
        async with http.get(f"{gw.admin}/v1/runs/{resp.headers['Durable-Run-Id']}") as run:
            stream = (await run.json())["stream"]
        assert stream["bytes"] >= 100 and stream["clients"] == 1 and stream["kept"]

        async def join(headers: dict[str, str] | None = None) -> bytes:
            async with http.get(result, headers=headers) as joined:
                assert joined.status == 200
                assert joined.headers["Content-Type"].startswith("text/event-stream")
                return await joined.read()

        both = asyncio.gather(join(), join(), join({"Last-Event-ID": "12"}))
        rest = await resp.read()
        a, b, after_12 = await both
    assert first + rest == expected
    assert a == b == expected
    assert after_12 == expected[expected.index(b"id: 13\n") :]


@pytest.mark.both_stores
async def test_a_finished_result_honours_range(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    for n, pad in ((10, 0), (200, 1000)):  # kept inline, then in the store's chunks
        expected = sse_body(n, pad=pad)
        async with http.get(gw.url(f"/s/x?n={n}&pad={pad}")) as resp:
            assert await resp.read() == expected
            result, run_id = resp.headers["Durable-Result"], resp.headers["Durable-Run-Id"]
        await until_status(http, gw, run_id, "succeeded")
        async with http.get(result, headers={"Range": "bytes=100-"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-{len(expected) - 1}/{len(expected)}"
            assert await resp.read() == expected[100:]
        async with http.get(result, headers={"Range": "bytes=5-9"}) as resp:
            assert resp.status == 206
            assert await resp.read() == expected[5:10]
        async with http.get(result, headers={"Range": f"bytes={len(expected)}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{len(expected)}"
        async with http.get(result) as resp:
            assert resp.status == 200
            assert await resp.read() == expected


@pytest.mark.both_stores
async def test_delete_on_the_result_url_stops_the_generation(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    async with http.get(gw.url("/s/x?n=200&gap_ms=50")) as resp:
        result, run_id = resp.headers["Durable-Result"], resp.headers["Durable-Run-Id"]
        await resp.content.readexactly(40)
        async with http.get(result) as joined:
            async with http.delete(result) as deleted:
                assert deleted.status == 200
            joined_body = await joined.read()
        body = await resp.read()
    cancelled = b"event: durable-cancelled\ndata: " + orjson.dumps({"result": result}) + b"\n\n"
    assert body.endswith(cancelled)
    assert joined_body.endswith(cancelled)
    assert len(body) < len(sse_body(200))
    await until_status(http, gw, run_id, "cancelled")
    async with http.get(result) as resp:
        assert resp.status == 409
    async with http.delete(result) as resp:
        assert resp.status == 409  # already over
    async with http.delete(result.replace("token=", "token=x")) as resp:
        assert resp.status == 404


@pytest.mark.both_stores
async def test_past_max_response_the_body_streams_but_is_not_kept(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer, max_response="1KiB"))
    expected = sse_body(100, pad=100)
    async with http.get(gw.url("/s/x?n=100&pad=100")) as resp:
        assert await resp.read() == expected
        result, run_id = resp.headers["Durable-Result"], resp.headers["Durable-Run-Id"]
    run = await until_status(http, gw, run_id, "succeeded")
    assert run["response"]["body_kept"] is False
    async with http.get(result) as resp:
        assert resp.status == 410
        assert resp.content_type == "application/problem+json"
        assert "max_response" in (await resp.json())["detail"]


async def test_an_sse_stream_waiting_on_a_retry_gets_heartbeats_then_the_result_url(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    slow = "{max_attempts: 3, initial_backoff: 30s, max_backoff: 30s, jitter: 0}"
    gw = gateway_factory(
        durable_route(streamer.url, name="s", path="/s/*", retry=slow, hold="2s"),
        env={"DURABLE_TEST_SSE_HEARTBEAT": "0.3"},
    )
    async with http.get(gw.url("/s/x?break_at=48")) as resp:  # between two events
        body = await resp.read()
        result = resp.headers["Durable-Result"]
    redirect = b"event: durable-redirect\ndata: " + orjson.dumps({"result": result}) + b"\n\n"
    assert body.startswith(sse_body(10)[:48])
    assert body.endswith(redirect)
    assert body.count(b": keep-alive\n\n") >= 3  # 2 s of silence at 0.3 s


@pytest.mark.both_stores
async def test_a_stream_follows_the_run_across_a_gateway_kill(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    expected = sse_body(40, pad=4000)  # past a stored chunk within the first second
    with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        async with http.get(gw.url("/s/x?n=40&pad=4000&gap_ms=100")) as resp:
            result, run_id = resp.headers["Durable-Result"], resp.headers["Durable-Run-Id"]
            await resp.content.readexactly(100_000)
            await asyncio.sleep(1.2)  # the first chunks are committed
            gw.kill()
            await resp.read()
    gw.restart()
    async with http.get(result) as resp:  # the resumed run: what is stored, then live
        assert resp.status == 200
        assert await resp.read() == expected
    await until_status(http, gw, run_id, "succeeded")
    assert streamer.attempts == 2
    async with http.get(result) as resp:
        assert await resp.read() == expected


@pytest.mark.both_stores
async def test_an_idempotent_duplicate_gets_the_streamed_result(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))
    expected = sse_body(100, pad=1000)
    headers = {"Idempotency-Key": "k1"}
    async with http.get(gw.url("/s/x?n=100&pad=1000"), headers=headers) as resp:
        assert await resp.read() == expected
        run_id = resp.headers["Durable-Run-Id"]
    await until_status(http, gw, run_id, "succeeded")

    async def replayed() -> None:
        async with http.get(gw.url("/s/x?n=100&pad=1000"), headers=headers) as again:
            assert again.headers["Idempotent-Replayed"] == "true"
            assert await again.read() == expected

    await assert_eventually(replayed)
    assert streamer.attempts == 1


async def test_sigterm_mid_stream_ends_it_with_the_result_url_within_the_grace(
    streamer: Streamer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(route(streamer))  # shutdown_grace: 5s
    expected = sse_body(100)
    async with http.get(gw.url("/s/x?n=100&gap_ms=100")) as resp:  # 10 s of stream
        result = resp.headers["Durable-Result"]
        await resp.content.readexactly(100)
        began = time.monotonic()
        stopping = asyncio.ensure_future(asyncio.to_thread(gw.proc.stop, signal.SIGTERM))
        body = await resp.read()  # ends cleanly: no error
        ended = time.monotonic() - began
        assert await stopping == 0
        stopped = time.monotonic() - began
    redirect = b"event: durable-redirect\ndata: " + orjson.dumps({"result": result}) + b"\n\n"
    assert body.endswith(redirect)
    assert ended < 5 + 3 and stopped < 5 + 4  # the grace, not three of them
    gw.launch()
    async with http.get(result) as resp:  # the run resumes where it stopped
        assert await resp.read() == expected
