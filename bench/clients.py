"""Why durable attempts use their own upstream client: CPU per call, aiohttp against ours.

Sends the bench backend's `/0` the same POST (53-byte body, the four `Durable-*` headers)
from 32 concurrent workers, first through aiohttp's client as the gateway used it
(session options, per-call timeouts), then through `gateway.upstream.pool.Pool`, and prints
this process's CPU per request for each. The backend runs in its own process, so its
CPU is not counted.

    python -m bench.clients [--requests 20000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.processes import Lab
from gateway import upstream
from gateway.cli import loop_runner
from gateway.http import proxy

BODY = b'{"prompt":"hello","n":1,"padding":"xxxxxxxxxxxxxxxx"}'
HEADERS = [
    ("Content-Type", "application/json"),
    ("Durable-Run-Id", "r" * 22),
    ("Durable-Attempt", "1"),
    ("Durable-Sidecar", "http://127.0.0.1:1/v1/runs/" + "r" * 22),
    ("Durable-Token", "t" * 43),
]
CONCURRENCY = 32
Call = Callable[[], Awaitable[bytes]]


async def aiohttp_client(base: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """aiohttp's client with the options (plain routes' `proxy.new_session`) and the
    per-call timeouts the durable attempts gave it."""
    session = proxy.new_session()
    per_call = aiohttp.ClientTimeout(total=None, sock_read=30, sock_connect=30)

    async def call() -> bytes:
        async with asyncio.timeout(30):
            resp = await session.request(
                "POST", base + "/0", headers=HEADERS, data=BODY, allow_redirects=False,
                timeout=per_call,
            )  # fmt: skip
        try:
            return await resp.read()
        finally:
            resp.release()

    return call, session.close


async def pool_client(base: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    pool = upstream.Pool()

    async def call() -> bytes:
        resp = await pool.request(base, "POST", "/0", HEADERS, BODY, 30)
        try:
            return await resp.read()
        finally:
            resp.release()

    return call, pool.close


async def measure(name: str, client: Call, requests: int) -> None:
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))  # warm the pool
    each = requests // CONCURRENCY

    async def worker() -> None:
        for _ in range(each):
            await client()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = each * CONCURRENCY
    print(f"| {name} | {done / wall:,.0f} | {1e6 * cpu / done:.1f} |")


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        lab = Lab(Path(workdir))
        try:
            backend = await lab.backend()
            print("| client | req/s | client CPU µs per request |\n|---|---:|---:|")
            for name, make in (("aiohttp", aiohttp_client), ("upstream.Pool", pool_client)):
                call, close = await make(backend.url)
                await measure(name, call, requests)
                await close()
        finally:
            lab.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    loop_runner(args.loop)(main(args.requests))
