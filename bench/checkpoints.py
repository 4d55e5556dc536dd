"""Store micro-benchmark: step checkpoints per second through the sidecar, with group
commit (`async`) and with `sync`, and the latency one `PUT` step has at c=1.

Writes only to runs it parked itself on its own gateways; never to the main gateway.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.loadgen import Loadgen, Plan, Shot, fire
from bench.processes import Gateway, Lab, Service, drained, poll, scrape
from bench.sizes import Sizes

log = logging.getLogger("bench")

CHECKPOINT = b'{"output":{"step":1,"tokens":42,"text":"result of a checkpointed step"}}'
MODES = ("async", "sync")


def routes(upstream: str) -> str:
    """`/park` attempts stay open while the load writes their steps; `/put1` times PUTs."""
    return f"""\
        - name: park
          match: {{path: /park}}
          upstream: {upstream}
          attempt_timeout: 10m
          max_steps: 10000000
          max_run_state: 4GiB
        - name: put1
          match: {{path: /put1}}
          upstream: {upstream}
          attempt_timeout: 5m
          max_steps: 100000
        """


async def park(gateway: Gateway, backend: Service, runs: int) -> list[dict[str, str]]:
    """Start `runs` runs whose attempts wait in the backend; their sidecar URLs and tokens."""
    statuses = await fire(gateway.url + "/park", runs, min(runs, 32), {"Prefer": "respond-async"})
    if statuses != {202: runs}:
        raise RuntimeError(f"parking runs: expected {runs} x 202, got {statuses}")
    async with aiohttp.ClientSession() as session:

        async def parked() -> list[dict[str, str]]:
            async with session.get(backend.url + "/_parked") as resp:
                found: list[dict[str, str]] = (await resp.json())["parked"]
                return found

        return await poll(
            parked,
            lambda found: len(found) >= runs,
            within=60,
            interval=0.05,
            failure=lambda found: f"only {len(found)} of {runs} runs reached the backend",
        )


async def release(backend: Service) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(backend.url + "/_release") as resp:
            resp.raise_for_status()


async def put_latency(gateway: Gateway, samples: int, sync: bool) -> dict[str, float]:
    """The backend times `samples` sequential `ctx.step` writes (after 10% warm-up)."""
    query = f"?n={samples}&warmup={max(10, samples // 10)}&sync={int(sync)}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async with session.post(gateway.url + "/put1" + query, data=b"{}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"/put1 answered {resp.status}: {await resp.text()}")
            answer: dict[str, float] = await resp.json()
            return answer


async def measure_mode(
    lab: Lab,
    backend: Service,
    loadgen: Loadgen,
    sizes: Sizes,
    mode: str,
    *,
    store_url: str | None = None,
    name: str = "store",
) -> dict[str, Any]:
    """One fresh gateway with `durability: mode` on its own SQLite file, or on
    `store_url` (a fresh database) when given."""
    gateway = await lab.gateway(
        f"{name}-{mode}", routes(backend.url), durability=mode, store_url=store_url
    )
    try:
        parked = await park(gateway, backend, sizes.store_runs)
        shots = tuple(
            Shot(
                urlsplit(p["sidecar"]).path + "/steps/ck",
                (("Authorization", f"Bearer {p['token']}"),),
            )
            for p in parked
        )
        plan = Plan(gateway.sidecar, shots, method="PUT", body=CHECKPOINT, unique=True)
        await loadgen.run(plan, sizes.connections, sizes.warmup)
        await drained(gateway)
        before, cpu_before = await scrape(gateway), gateway.usage().cpu_seconds
        load = await loadgen.run(plan, sizes.connections, sizes.throughput)
        after, cpu_after = await scrape(gateway), gateway.usage().cpu_seconds
        await release(backend)
        latency = await put_latency(gateway, sizes.put_samples, sync=False)
        key = 'durable_steps_recorded_total{result="created"}'
        return {
            "checkpoints_per_s": load.rps,
            "checkpoints": load.requests,
            "recorded": after.get(key, 0.0) - before.get(key, 0.0),
            "errors": load.errors,
            "c32_p50_ms": load.p50_ms,
            "c32_p99_ms": load.p99_ms,
            "gateway_cpu_us_per_checkpoint": (cpu_after - cpu_before) / load.requests * 1e6
            if load.requests
            else 0.0,
            "put_c1_p50_ms": latency["p50_ms"],
            "put_c1_p90_ms": latency["p90_ms"],
            "put_c1_p99_ms": latency["p99_ms"],
            "put_c1_samples": latency["n"],
        }
    finally:
        await release(backend)
        lab.stop(gateway)


async def measure(lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        log.info("store: %s durability", mode)
        out[mode] = await measure_mode(lab, backend, loadgen, sizes, mode)
    return out
