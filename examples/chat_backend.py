"""A streaming "chat" backend: two checkpointed LLM calls, then the answer token by token.

Run it behind the gateway (README, "Streaming responses that survive failures"):

    python examples/chat_backend.py --port 3000 [--crash-after N] [--step-ms 800] [--token-ms 40]
    durable-gateway --config examples/chat.yaml     # routes /chat/* durably to port 3000

Endpoints:
  POST /chat        {"prompt": "...", "temperature": 0.7}: steps "retrieve" and "plan", then
                    the answer as text/event-stream, one event per token (`id: <index>`,
                    `data: {"token": "..."}`), then `event: done` with `data: {"tokens": N}`
  POST /chat/text   the same answer as text/plain chunks
  GET /_counts[?run_id=]   how often each step's function ran
  GET /_health

The steps stand for LLM calls: slow (`--step-ms`), and random like sampling unless the
temperature is 0. The answer is streamed from their memoized outputs only, so a retried
attempt sends the same bytes again, and the gateway can resume a broken stream without a
seam. Were `plan` not a step, a retry would sample another answer and the stream would
diverge.

`X-Crash-After: N` on a request (or `--crash-after N` for every request) makes the first
attempt (`Durable-Attempt: 1`) break the connection off after N tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

try:
    import step_protocol  # noqa: F401  (installed with `pip install -e .`)
except ModuleNotFoundError:  # run from a checkout: python examples/chat_backend.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_protocol import StepClient, aiohttp_middleware


@dataclass(frozen=True, slots=True)
class Options:
    """The command line's pacing and crash point."""

    step_ms: int
    token_ms: int
    crash_after: int | None


Counts = defaultdict[str, defaultdict[str, int]]
STEPS: web.AppKey[StepClient] = web.AppKey("steps", StepClient)
COUNTS: web.AppKey[Counts] = web.AppKey("counts", defaultdict)
OPTIONS: web.AppKey[Options] = web.AppKey("options", Options)
MAX_PROMPT = 4000
DOCUMENTS = (
    "Each step's result is recorded with the gateway once.",
    "A retried attempt gets its completed steps back and skips them.",
    "The client is held on its connection while the run retries.",
    "A result URL serves the response to a client that lost its connection.",
    "Step outputs are JSON and live in one SQLite file.",
    "A backend in any language needs only an HTTP client.",
)
OPENERS = ("Good question.", "In short:", "Here is how it works.", "Let me explain.")
CLOSERS = ("That is all there is to it.", "Nothing runs twice.", "Try it with curl.")


class BadRequest(ValueError):
    """A request body or header the example does not accept."""


def _model(temperature: float, prompt: str, call: str) -> random.Random:
    """The simulated model's randomness: seeded by the prompt at temperature 0 (greedy,
    the same answer every time), fresh on every call otherwise (sampling)."""
    return random.Random(f"{call}\0{prompt}") if temperature == 0 else random.Random()


async def retrieve(prompt: str, temperature: float, step_ms: int) -> dict[str, Any]:
    """Step 1, a slow model call: pick the context documents for the prompt."""
    await asyncio.sleep(step_ms / 1000)
    rng = _model(temperature, prompt, "retrieve")
    return {"documents": sorted(rng.sample(range(len(DOCUMENTS)), 3))}


async def plan(prompt: str, context: dict[str, Any], temperature: float, step_ms: int) -> str:
    """Step 2, another slow model call: the answer's text, from the prompt and the context."""
    await asyncio.sleep(step_ms / 1000)
    rng = _model(temperature, prompt, "plan")
    facts = [DOCUMENTS[i] for i in context["documents"]]
    topic = " ".join(prompt.split()[:8])
    return " ".join([rng.choice(OPENERS), f'You asked: "{topic}"', *facts, rng.choice(CLOSERS)])


def tokens(answer: str) -> list[str]:
    """The answer cut into tokens (words with their trailing space), the way it streams."""
    return re.findall(r"\S+\s*", answer)


def sse_event(index: int, token: str) -> bytes:
    return f"id: {index}\ndata: {json.dumps({'token': token})}\n\n".encode()


def _body(raw: bytes) -> tuple[str, float]:
    """The prompt and temperature of a request body, checked."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    prompt, temperature = body.get("prompt"), body.get("temperature", 0.7)
    if not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT:
        raise BadRequest(f"prompt must be a string of 1 to {MAX_PROMPT} characters")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise BadRequest("temperature must be a number")
    if not 0 <= temperature <= 2:
        raise BadRequest("temperature must be between 0 and 2")
    return prompt, float(temperature)


def _crash_after(request: web.Request, default: int | None) -> int | None:
    raw = request.headers.get("X-Crash-After")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest("X-Crash-After must be a whole number of tokens")
    return int(raw)


async def chat(request: web.Request) -> web.StreamResponse:
    """Two memoized steps, then the answer streamed as SSE (/chat) or plain text (/chat/text)."""
    options = request.app[OPTIONS]
    try:
        prompt, temperature = _body(await request.read())
        crash_after = _crash_after(request, options.crash_after)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
    ctx = request.app[STEPS].context(request.headers)
    counts = request.app[COUNTS][ctx.run_id or "none"]

    async def retrieve_step() -> dict[str, Any]:
        counts["retrieve"] += 1
        return await retrieve(prompt, temperature, options.step_ms)

    context = await ctx.step("retrieve", retrieve_step)

    async def plan_step() -> str:
        counts["plan"] += 1
        return await plan(prompt, context, temperature, options.step_ms)

    answer = await ctx.step("plan", plan_step)
    # From here on nothing may vary between attempts: every byte comes from the request
    # and the two memoized outputs. Only the crash flag looks at the attempt.
    sse = request.path == "/chat"
    parts = tokens(answer)
    content_type = "text/event-stream" if sse else "text/plain; charset=utf-8"
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    crash = crash_after if ctx.attempt == 1 else None
    for i, token in enumerate(parts):
        if i == crash:
            return _break_off(request, response)
        await asyncio.sleep(options.token_ms / 1000)  # the model generating the next token
        await response.write(sse_event(i, token) if sse else token.encode())
    if crash is not None:  # N past the last token: break off before the end all the same
        return _break_off(request, response)
    if sse:
        await response.write(
            f"event: done\ndata: {json.dumps({'tokens': len(parts)})}\n\n".encode()
        )
    await response.write_eof()
    return response


def _break_off(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Simulate a crash mid-stream: the tokens written so far go out, then the connection
    closes without the closing chunk, so the body is incomplete (the gateway retries)."""
    assert request.transport is not None
    request.transport.close()  # close, not abort: what was written is flushed first
    return response  # never finished: the transport is gone


async def counts(request: web.Request) -> web.Response:
    all_counts = request.app[COUNTS]
    run_id = request.query.get("run_id")
    if run_id is not None:
        return web.json_response({"counts": dict(all_counts.get(run_id, {}))})
    return web.json_response({run: dict(steps) for run, steps in all_counts.items()})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(options: Options) -> web.Application:
    app = web.Application(middlewares=[aiohttp_middleware])
    app[OPTIONS] = options
    step_counts: Counts = defaultdict(lambda: defaultdict(int))
    app[COUNTS] = step_counts

    async def step_client(app: web.Application) -> AsyncIterator[None]:
        async with StepClient() as client:
            app[STEPS] = client
            yield

    app.cleanup_ctx.append(step_client)
    app.router.add_post("/chat", chat)
    app.router.add_post("/chat/text", chat)
    app.router.add_get("/_counts", counts)
    app.router.add_get("/_health", health)
    return app


async def serve(host: str, port: int, options: Options) -> None:
    """Serve until SIGINT or SIGTERM; print `listening on PORT` once bound (port 0 works)."""
    runner = web.AppRunner(make_app(options), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"listening on {runner.addresses[0][1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--step-ms", type=int, default=800, help="time each step takes")
    parser.add_argument("--token-ms", type=int, default=40, help="time between tokens")
    parser.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help="break every request's first attempt off after N tokens",
    )
    args = parser.parse_args(argv)
    if min(args.step_ms, args.token_ms, args.crash_after or 0) < 0:
        parser.error("--step-ms, --token-ms and --crash-after must be >= 0")
    options = Options(args.step_ms, args.token_ms, args.crash_after)
    asyncio.run(serve(args.host, args.port, options))


if __name__ == "__main__":
    main()
