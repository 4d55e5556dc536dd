"""The example backend (aiohttp + StepClient) for the quick start, `durable-gateway demo`
and the integration tests.

Fails on request, through query parameters, so every retry path can be shown; it never
keeps state beyond its in-process step counters.

    python -m step_protocol.demo --port 3000 [--host 127.0.0.1] [--steps-sync]
    python examples/backend.py --port 3000   (the same, from a checkout)

Endpoints:
  GET|POST /demo/steps?n=3   steps step-1..step-n, JSON {"run_id", "attempt", "results"}
      fail_at=K      fail just before step K (K = n+1: after every step), on attempts
      fail_times=F   1..F only (default 1), the way mode= says:
      mode=          500 (default) | 503 (with Retry-After: retry_after=, default 1) | drop
                     (close the connection) | hang (sleep an hour) | 400 | noretry (500 with
                     Durable-Retry: no)
      raise_at=K     step-K's function raises on attempts 1..F instead: the client records
                     the failed try with the gateway, then the handler answers 500
      work_ms=W      each step's function takes W ms (every attempt)
      delay_ms=D     sleep D ms before answering (every attempt)
      pause_ms=P     sleep P ms after each step (to catch a run mid-step)
      chaos=X        before each step, fail with probability X (500 or drop), any attempt
  GET|POST /demo/sleep?seconds=N&n=2   step-1, a durable sleep "nap" of N seconds, then
                 step-2..step-n; JSON {"run_id", "attempt", "results"}. While the nap lasts
                 the handler answers 202 {"suspended": true, ...} (the gateway ignores it)
  GET|POST /demo/wait?event=order.paid&order_id=42[&timeout=30][&lookback=10m]   step-1,
                 a wait "paid" for the event (matching data.order_id when order_id is given;
                 no timeout: wait forever), then step-2 with the event; JSON {"run_id",
                 "attempt", "event", "results"}; event is null when the timeout passed.
                 Without the gateway nothing can deliver an event: 501 with {"error"}
  GET /demo/stream?chunks=5&interval_ms=100   one line per chunk, streamed
      size=B         make each chunk B bytes: its line padded with dots (a large body)
  *   /demo/echo     method, path, query, headers (names lowercased) and body, as JSON
  GET /_counts[?run_id=]   how often each step's function ran
  GET /_violations   steps whose function ran again after the gateway acknowledged them
  GET /_health
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from step_protocol import StepClient, StepProtocolError, aiohttp_middleware, wire

Counts = defaultdict[str, defaultdict[str, int]]
STEPS: web.AppKey[StepClient] = web.AppKey("steps", StepClient)
COUNTS: web.AppKey[Counts] = web.AppKey("counts", defaultdict)
STEPS_SYNC: web.AppKey[bool] = web.AppKey("steps_sync", bool)
ACKED: web.AppKey[set[tuple[str, str]]] = web.AppKey("acked", set)
VIOLATIONS: web.AppKey[list[str]] = web.AppKey("violations", list)
MODES = ("500", "503", "drop", "hang", "400", "noretry")


class BadQuery(ValueError):
    """A query parameter the demo does not understand."""


class StepFailed(Exception):
    """The failure `raise_at` injects into a step's function."""


def _float(query: dict[str, str], name: str, default: float) -> float:
    try:
        value = float(query.get(name, default))
    except ValueError:
        raise BadQuery(f"{name} must be a number") from None
    if not 0 <= value <= 1:
        raise BadQuery(f"{name} must be between 0 and 1")
    return value


def _number(query: dict[str, str], name: str, default: float) -> float:
    try:
        value = float(query.get(name, default))
    except ValueError:
        raise BadQuery(f"{name} must be a number") from None
    if not 0 <= value < float("inf"):
        raise BadQuery(f"{name} must be >= 0")
    return value


def _duration(query: dict[str, str], name: str) -> float | str | None:
    """Seconds as a number, or a duration string like `30s` or `1h` passed on as is."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        seconds = wire.parse_duration(raw)
    except ValueError as exc:
        raise BadQuery(f"{name}: {exc}") from None
    return seconds if raw.strip().replace(".", "", 1).isdigit() else raw


def _int(query: dict[str, str], name: str, default: int, *, low: int = 0) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None
    if value < low:
        raise BadQuery(f"{name} must be >= {low}")
    return value


async def demo_steps(request: web.Request) -> web.StreamResponse:
    """Run n steps through the sidecar, failing where the query says."""
    query = dict(request.query)
    try:
        n = _int(query, "n", 3)
        fail_at = _int(query, "fail_at", 0)
        fail_times = _int(query, "fail_times", 1)
        raise_at = _int(query, "raise_at", 0)
        work_ms = _int(query, "work_ms", 0)
        retry_after = _int(query, "retry_after", 1)
        delay_ms = _int(query, "delay_ms", 0)
        pause_ms = _int(query, "pause_ms", 0)
        chaos = _float(query, "chaos", 0.0)
        mode = query.get("mode", "500")
        if mode not in MODES:
            raise BadQuery(f"mode must be one of {', '.join(MODES)}")
    except BadQuery as exc:
        return web.json_response({"error": str(exc)}, status=400)

    ctx = request.app[STEPS].context(request.headers)
    run_key = ctx.run_id or "none"
    counts = request.app[COUNTS][run_key]
    acked = request.app[ACKED]
    failing = ctx.attempt <= fail_times
    results: list[Any] = []
    for i in range(1, n + 2):
        if i == fail_at and failing:
            return await _fail(request, mode, ctx.attempt, retry_after)
        if chaos and i <= n and random.random() < chaos:
            return await _fail(request, random.choice(("500", "drop")), ctx.attempt, 0)
        if i > n:
            break
        step_id = f"step-{i}"

        async def work(i: int = i, step_id: str = step_id) -> dict[str, Any]:
            counts[step_id] += 1
            if (run_key, step_id) in acked:  # the gateway had acknowledged it: must not rerun
                request.app[VIOLATIONS].append(f"{run_key}/{step_id}")
            if work_ms:
                await asyncio.sleep(work_ms / 1000)
            if i == raise_at and failing:
                raise StepFailed(f"{step_id} failed on attempt {ctx.attempt}")
            return {"step": i, "value": f"computed on attempt {ctx.attempt}"}

        try:
            results.append(await ctx.step(step_id, work, sync=request.app[STEPS_SYNC]))
        except StepFailed as exc:  # the client has reported it to the gateway already
            return web.json_response({"error": str(exc), "attempt": ctx.attempt}, status=500)
        acked.add((run_key, step_id))
        if pause_ms:
            await asyncio.sleep(pause_ms / 1000)
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    return web.json_response({"run_id": ctx.run_id, "attempt": ctx.attempt, "results": results})


def _counted_step(request: web.Request, run_key: str, i: int, attempt: int) -> Any:
    """The work of step-i: counted per run, like /demo/steps."""
    counts = request.app[COUNTS][run_key]

    def work() -> dict[str, Any]:
        counts[f"step-{i}"] += 1
        return {"step": i, "value": f"computed on attempt {attempt}"}

    return work


async def demo_sleep(request: web.Request) -> web.StreamResponse:
    """step-1, a durable sleep, then the other steps; Suspend ends it via the middleware."""
    query = dict(request.query)
    try:
        seconds = _number(query, "seconds", 1.0)
        n = _int(query, "n", 2, low=1)
    except BadQuery as exc:
        return web.json_response({"error": str(exc)}, status=400)
    ctx = request.app[STEPS].context(request.headers)
    run_key = ctx.run_id or "none"
    results = [await ctx.step("step-1", _counted_step(request, run_key, 1, ctx.attempt))]
    # Behind the gateway: raises Suspend until the nap is over (aiohttp_middleware answers
    # 202 and the gateway calls this handler again after the wake time). Without: sleeps.
    await ctx.sleep("nap", seconds=seconds)
    for i in range(2, n + 1):
        results.append(await ctx.step(f"step-{i}", _counted_step(request, run_key, i, ctx.attempt)))
    return web.json_response({"run_id": ctx.run_id, "attempt": ctx.attempt, "results": results})


async def demo_wait(request: web.Request) -> web.StreamResponse:
    """step-1, a wait for an event, then step-2 with the event in its output."""
    query = dict(request.query)
    try:
        timeout = _duration(query, "timeout")
        lookback = _duration(query, "lookback")
    except BadQuery as exc:
        return web.json_response({"error": str(exc)}, status=400)
    event = query.get("event", "order.paid")
    order_id = query.get("order_id")
    ctx = request.app[STEPS].context(request.headers)
    run_key = ctx.run_id or "none"
    counts = request.app[COUNTS][run_key]
    results = [await ctx.step("step-1", _counted_step(request, run_key, 1, ctx.attempt))]
    match = {"data.order_id": order_id} if order_id is not None else None
    try:
        # Behind the gateway: raises Suspend until a matching event arrives or the timeout
        # passes; the middleware answers 202 and the gateway calls us again then.
        ev = await ctx.wait_for_event(
            "paid", event, match=match, timeout=timeout, lookback=lookback
        )
    except StepProtocolError as exc:  # not behind the gateway: no one can deliver events
        return web.json_response({"error": str(exc)}, status=501)

    def step_2() -> dict[str, Any]:
        counts["step-2"] += 1
        return {"step": 2, "value": f"computed on attempt {ctx.attempt}", "event": ev}

    results.append(await ctx.step("step-2", step_2))
    return web.json_response(
        {"run_id": ctx.run_id, "attempt": ctx.attempt, "event": ev, "results": results}
    )


async def _fail(request: web.Request, mode: str, attempt: int, retry_after: int) -> web.Response:
    body = {"error": f"injected failure ({mode})", "attempt": attempt}
    if mode == "503":
        return web.json_response(body, status=503, headers={"Retry-After": str(retry_after)})
    if mode == "400":
        return web.json_response(body, status=400)
    if mode == "noretry":
        return web.json_response(body, status=500, headers={"Durable-Retry": "no"})
    if mode == "hang":
        await asyncio.sleep(3600)
    if mode == "drop":
        # Abort the TCP connection before any byte of a response: the caller sees the
        # connection close mid-request. aiohttp then has nowhere to send what we return.
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)  # never sent: the transport is gone
    return web.json_response(body, status=500)


async def demo_stream(request: web.Request) -> web.StreamResponse:
    """Chunked response, one line per chunk, to show streaming passes through."""
    try:
        chunks = _int(dict(request.query), "chunks", 5)
        interval_ms = _int(dict(request.query), "interval_ms", 100)
        size = _int(dict(request.query), "size", 0)
        if size > 16 * 1024 * 1024:
            raise BadQuery("size must be at most 16 MiB")
    except BadQuery as exc:
        return web.json_response({"error": str(exc)}, status=400)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(1, chunks + 1):
        if i > 1:
            await asyncio.sleep(interval_ms / 1000)
        await response.write(stream_chunk(i, size))
    await response.write_eof()
    return response


def stream_chunk(i: int, size: int) -> bytes:
    """Chunk `i` of /demo/stream: `chunk i`, padded with dots to `size` bytes, and a newline."""
    line = f"chunk {i}"
    return (line + "." * (size - len(line) - 1) + "\n").encode()


async def demo_echo(request: web.Request) -> web.Response:
    """What arrived, as JSON: header names lowercased, repeated headers joined with ", "."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": headers,
            "body": await request.text(),
        }
    )


async def violations(request: web.Request) -> web.Response:
    """Steps whose function ran again after the gateway had acknowledged them."""
    return web.json_response({"violations": request.app[VIOLATIONS]})


async def counts(request: web.Request) -> web.Response:
    all_counts = request.app[COUNTS]
    run_id = request.query.get("run_id")
    if run_id is not None:
        return web.json_response({"counts": dict(all_counts.get(run_id, {}))})
    return web.json_response({run: dict(steps) for run, steps in all_counts.items()})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(*, steps_sync: bool = False) -> web.Application:
    # aiohttp_middleware answers a Suspend (a sleep or wait not over yet) with 202 JSON.
    app = web.Application(middlewares=[aiohttp_middleware])
    step_counts: Counts = defaultdict(lambda: defaultdict(int))
    app[COUNTS] = step_counts
    app[ACKED] = set()
    app[VIOLATIONS] = []
    app[STEPS_SYNC] = steps_sync

    async def step_client(app: web.Application) -> AsyncIterator[None]:
        async with StepClient() as client:
            app[STEPS] = client
            yield

    app.cleanup_ctx.append(step_client)
    app.router.add_route("GET", "/demo/steps", demo_steps)
    app.router.add_route("POST", "/demo/steps", demo_steps)
    for method in ("GET", "POST"):
        app.router.add_route(method, "/demo/sleep", demo_sleep)
        app.router.add_route(method, "/demo/wait", demo_wait)
    app.router.add_get("/demo/stream", demo_stream)
    app.router.add_route("*", "/demo/echo", demo_echo)
    app.router.add_get("/_counts", counts)
    app.router.add_get("/_violations", violations)
    app.router.add_get("/_health", health)
    return app


async def serve(host: str, port: int, *, steps_sync: bool) -> None:
    """Serve until SIGINT or SIGTERM; print `listening on PORT` once bound (port 0 works)."""
    # A request still at work (a `hang`) holds the shutdown a second, not aiohttp's 60 s.
    runner = web.AppRunner(make_app(steps_sync=steps_sync), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        print(f"listening on {bound}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--steps-sync", action="store_true", help="write steps ?durable=sync")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, steps_sync=args.steps_sync))


if __name__ == "__main__":
    main()
