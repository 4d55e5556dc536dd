"""The benchmark backend: aiohttp with a 0-step and a 3-step handler, plus the fixtures
the store, memory and streaming checks need. Without Durable-* headers the steps just run
here.

Never sleeps or blocks on purpose on the measured paths: its cost is what is compared
(`/sse` waits between its events, after the first one, which is what is timed).

    python -m bench.backend --port 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from bench.loadgen import summarize
from step_protocol import StepClient, aiohttp_middleware, parse_headers

STEPS: web.AppKey[StepClient] = web.AppKey("steps", StepClient)
PARKED: web.AppKey[list[dict[str, Any]]] = web.AppKey("parked", list)
RELEASE: web.AppKey[asyncio.Event] = web.AppKey("release", asyncio.Event)

SSE_EVENTS = 5
"""Events in one `/sse` response."""
MIB = 1024 * 1024
_BLOCK = os.urandom(MIB // 4)
"""What `/big` writes over and over: made once, so the backend only copies it out."""


def sse_event(i: int) -> bytes:
    """The `i`th event of `/sse`: an id and a small JSON token, like an LLM stream's."""
    return b'id: %d\ndata: {"token": %d, "text": "word %d"}\n\n' % (i, i, i)


def sse_body() -> bytes:
    """The whole body of one `/sse` response, for the client to check what it got."""
    return b"".join(sse_event(i) for i in range(SSE_EVENTS))


async def zero(request: web.Request) -> web.Response:
    """0 steps: read the body, answer a small JSON object."""
    body = await request.read()
    return web.json_response({"ok": True, "received": len(body)})


def _work(i: int, size: int) -> dict[str, Any]:
    """A step's output: small, JSON-native, like an LLM call's summary."""
    return {"step": i, "tokens": size * 7 % 97, "text": f"result of step {i}"}


def _step(i: int, size: int) -> Callable[[], dict[str, Any]]:
    return lambda: _work(i, size)


async def three(request: web.Request) -> web.Response:
    """3 steps, each checkpointed through the sidecar with the reference client."""
    body = await request.read()
    ctx = request.app[STEPS].context(request.headers)
    results: list[dict[str, Any]] = []
    for i in (1, 2, 3):
        results.append(await ctx.step(f"step-{i}", _step(i, len(body))))
    return web.json_response({"ok": True, "results": results})


async def fail(request: web.Request) -> web.Response:
    """Always 503 with a long Retry-After: the run waits in backoff (memory check)."""
    return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "600"})


async def sleep(request: web.Request) -> web.Response:
    """One step, then a 600 s durable sleep: the run suspends (memory check)."""
    ctx = request.app[STEPS].context(request.headers)
    await ctx.step("before", _step(0, 0))
    await ctx.sleep("nap", seconds=600)  # raises Suspend behind the gateway
    return web.json_response({"ok": True})


async def park(request: web.Request) -> web.Response:
    """Hold the attempt open and publish its sidecar URL and token (store check), its
    attempt number and when it arrived (`time.monotonic()`, one clock for every process
    of the machine: the takeover check compares it with when it killed the first node).
    `?step=1`: record one step through the sidecar first (memoized on later attempts)."""
    arrived = time.monotonic()
    info = parse_headers(request.headers)
    if info is None:
        return web.json_response({"error": "only behind the gateway"}, status=400)
    if request.query.get("step") == "1":
        await request.app[STEPS].context(request.headers).step("before", _step(0, 0))
    request.app[PARKED].append(
        {
            "run_id": info.run_id,
            "sidecar": info.sidecar,
            "token": info.token,
            "attempt": info.attempt,
            "arrived": arrived,
        }
    )
    await request.app[RELEASE].wait()
    return web.json_response({"ok": True})


async def parked(request: web.Request) -> web.Response:
    return web.json_response({"parked": request.app[PARKED]})


async def release(request: web.Request) -> web.Response:
    """Let every parked attempt answer; later ones park again."""
    request.app[RELEASE].set()
    request.app[RELEASE] = asyncio.Event()
    request.app[PARKED].clear()
    return web.json_response({"ok": True})


async def put_latency(request: web.Request) -> web.Response:
    """`?n=N&warmup=W&sync=0|1`: W, then N sequential step writes; N's latency percentiles."""
    n = int(request.query.get("n", "500"))
    warmup = int(request.query.get("warmup", "50"))
    sync = request.query.get("sync", "0") == "1"
    ctx = request.app[STEPS].context(request.headers)
    latencies: list[int] = []
    for i in range(warmup + n):
        began = time.perf_counter_ns()
        await ctx.step(f"put-{i}", _step(i, 1), sync=sync)
        if i >= warmup:
            latencies.append(time.perf_counter_ns() - began)
    figures = summarize(latencies, 0, sum(latencies) / 1e9)
    return web.json_response(
        {
            "n": figures.requests,
            "p50_ms": figures.p50_ms,
            "p90_ms": figures.p90_ms,
            "p99_ms": figures.p99_ms,
            "mean_ms": figures.mean_ms,
        }
    )


async def sse(request: web.Request) -> web.StreamResponse:
    """`?gap_ms=G`: a `text/event-stream` of SSE_EVENTS events, the first at once, the
    others G ms apart (default 2); chunked, no Content-Length, so it really streams."""
    await request.read()
    gap = float(request.query.get("gap_ms", "2")) / 1000
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    for i in range(SSE_EVENTS):
        if i:
            await asyncio.sleep(gap)
        await resp.write(sse_event(i))
    await resp.write_eof()
    return resp


async def big(request: web.Request) -> web.StreamResponse:
    """`?mib=N`: N MiB (default 1024) as fast as the reader takes them, chunked with no
    Content-Length, from one reused buffer."""
    await request.read()
    blocks = int(request.query.get("mib", "1024")) * (MIB // len(_BLOCK))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    for _ in range(blocks):
        await resp.write(_BLOCK)
    await resp.write_eof()
    return resp


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app() -> web.Application:
    app = web.Application(middlewares=[aiohttp_middleware])
    app[PARKED] = []
    app[RELEASE] = asyncio.Event()

    async def step_client(app: web.Application) -> AsyncIterator[None]:
        async with StepClient() as client:  # one keep-alive session for every sidecar call
            app[STEPS] = client
            yield

    async def unpark(app: web.Application) -> None:
        app[RELEASE].set()  # parked attempts answer, so shutdown need not wait for them

    app.on_shutdown.append(unpark)

    app.cleanup_ctx.append(step_client)
    for prefix in ("", "/plain"):  # /plain/*: the gateway's `durable: false` route
        app.router.add_route("*", prefix + "/0", zero)
        app.router.add_route("*", prefix + "/3", three)
        app.router.add_route("*", prefix + "/sse", sse)
        app.router.add_route("*", prefix + "/big", big)
    app.router.add_route("*", "/fail", fail)
    app.router.add_route("*", "/sleep", sleep)
    app.router.add_route("*", "/park", park)
    app.router.add_route("*", "/put1", put_latency)
    app.router.add_get("/_parked", parked)
    app.router.add_post("/_release", release)
    app.router.add_get("/_health", health)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        print(f"listening on {runner.addresses[0][1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
