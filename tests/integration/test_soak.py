"""Soak: concurrent clients, a backend failing at random steps, the gateway SIGKILLed and
restarted a few times; every accepted request still gets its final response.

CI runs the short version; `DURABLE_SOAK_SECONDS=300 pytest -s -m soak` runs a long one.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route, start_backend
from tests.helpers import accept, all_counts, final

SECONDS = float(os.environ.get("DURABLE_SOAK_SECONDS", "20"))
CLIENTS = int(os.environ.get("DURABLE_SOAK_CLIENTS", "16"))
RESTARTS = int(os.environ.get("DURABLE_SOAK_RESTARTS", "3"))
RETRY = "{max_attempts: 50, initial_backoff: 20ms, max_backoff: 300ms, budget: off}"
"""No retry budget: the backend fails an attempt in three, so a budget would (rightly)
hold most retries back for minutes after the clients stop; this soak is about kills."""


@pytest.mark.soak
@pytest.mark.timeout(SECONDS * 4 + 120)
@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_soak_with_gateway_kills(
    durability: str,
    tmp_path: Path,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    """Under `sync` no acknowledged step runs twice; under `async` only those acknowledged
    within the last group-commit window before a kill may (counted as violations)."""
    extra = ["--steps-sync"] if durability == "sync" else []
    backend = start_backend("python", tmp_path, *extra)
    try:
        await soak(durability, backend, gateway_factory, http)
    finally:
        backend.proc.stop()


async def soak(
    durability: str, backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, retry=RETRY, hold="0s"), storage=f"durability: {durability}"
    )
    accepted: list[str] = []
    refused = 0
    deadline = time.monotonic() + SECONDS

    async def client(i: int) -> None:
        nonlocal refused
        n = 0
        while time.monotonic() < deadline:
            n += 1
            url = gw.url(f"/demo/steps?n=3&chaos=0.15&c={i}&r={n}")
            try:
                accepted.append((await accept(http, url))[1])
            except aiohttp.ClientError:  # the gateway is down: never accepted, try again
                refused += 1
                await asyncio.sleep(0.05)

    async def killer() -> int:
        restarts = 0
        for _ in range(RESTARTS):
            await asyncio.sleep(SECONDS / (RESTARTS + 1))
            gw.kill()
            await asyncio.to_thread(gw.launch)
            restarts += 1
        return restarts

    *_, restarts = await asyncio.gather(*(client(i) for i in range(CLIENTS)), killer())

    limit = asyncio.Semaphore(32)

    async def answer(location: str) -> dict[str, Any]:
        async with limit:
            answered = await final(http, location, within=SECONDS * 2 + 60, wait=10, expect=200)
        body: dict[str, Any] = answered[1]
        return body

    bodies = await asyncio.gather(*(answer(location) for location in accepted))
    counts = await all_counts(http, backend)
    async with http.get(backend.url + "/_violations") as resp:
        violations = (await resp.json())["violations"]
    retries = sum(body["attempt"] - 1 for body in bodies)
    reexecuted = sum(n - 1 for run in counts.values() for n in run.values())
    print(
        f"\nsoak ({durability}): {SECONDS:.0f}s, {CLIENTS} clients, "
        f"{len(accepted)} requests accepted "
        f"({refused} refused while down), {retries} retries, {restarts} SIGKILL restarts, "
        f"{reexecuted} step re-executions, {len(violations)} of them acknowledged before"
    )
    assert restarts == RESTARTS
    assert len(bodies) == len(accepted) > 0
    assert all(len(body["results"]) == 3 for body in bodies)
    if durability == "sync":
        assert violations == []
