"""PostgreSQL beside SQLite, each figure measured next to its SQLite counterpart in the
same run: checkpoints per second per node (`async` and `sync`), CPU per durable 3-step
request, and the takeover time after `kill -9` of the node that drives a run.

Starts its own throwaway PostgreSQL 15 server (`tests/postgres.py`) with fsync on, so the
figures pay for real commits, and stops it at the end; every gateway gets a fresh
database on it. Touches no other server.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg

from bench import checkpoints, hops, procstat
from bench.loadgen import Loadgen
from bench.processes import Gateway, Lab, Service, poll, scrape
from bench.scale import routes as durable_routes
from bench.sizes import Sizes

if TYPE_CHECKING:
    from tests.postgres import PgServer

log = logging.getLogger("bench")

STORES = ("sqlite", "postgresql")
TAKEN_OVER = 'durable_runs_taken_over_total{why="node_gone"}'
SETTINGS = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level")
TAKEOVER_ROUTES = """\
    - name: hold
      match: {{path: /park}}
      upstream: {upstream}
      attempt_timeout: 10m
    """
"""The takeover run's route: its attempts record one step, then stay open in the backend."""


async def measure(lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes) -> dict[str, Any]:
    from tests.postgres import pg_server  # the tests' server, needed by this section only

    base = Path(tempfile.mkdtemp(prefix="pg-", dir=lab.workdir))
    log.info("postgres: starting a throwaway server (fsync on) in %s", base)
    with pg_server(base, durable=True) as server:
        out: dict[str, Any] = {"server": await _settings(server)}
        out["checkpoints"] = await _checkpoints(lab, backend, loadgen, sizes, server)
        out["cpu_3step"] = await _cpu(lab, backend, loadgen, sizes, server)
        out["takeover"] = await _takeover(lab, backend, sizes, server)
        out["wake"] = await _wake(lab, backend, sizes, server)
    return out


async def _settings(server: PgServer) -> dict[str, str]:
    """What the figures were measured against, as the server itself reports it."""
    conn = await asyncpg.connect(server.dsn)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in SETTINGS}
    finally:
        await conn.close()


def _ratio(pg: float | None, sqlite: float | None) -> float | None:
    return pg / sqlite if pg is not None and sqlite else None


async def _checkpoints(
    lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes, server: PgServer
) -> dict[str, Any]:
    """The store section's measurement, once on SQLite and once on PostgreSQL per mode."""
    out: dict[str, Any] = {}
    for mode in checkpoints.MODES:
        pair: dict[str, Any] = {}
        for store in STORES:
            log.info("postgres: checkpoints, %s durability, %s", mode, store)
            url = await server.create_database() if store == "postgresql" else None
            pair[store] = await checkpoints.measure_mode(
                lab, backend, loadgen, sizes, mode, store_url=url, name=f"pg-{store}"
            )
        pair["ratio"] = _ratio(
            pair["postgresql"]["checkpoints_per_s"], pair["sqlite"]["checkpoints_per_s"]
        )
        out[mode] = pair
    return out


async def _cpu(
    lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes, server: PgServer
) -> dict[str, Any]:
    """3-step c=32 loads through a gateway on each store, alternating within each round;
    the gateway's CPU per request and, on PostgreSQL, the database server's too."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    gateways = {
        "sqlite": await lab.gateway("pg-cpu-sqlite", durable_routes(backend.url)),
        "postgresql": await lab.gateway(
            "pg-cpu-postgresql",
            durable_routes(backend.url),
            store_url=await server.create_database(),
        ),
    }
    rounds: dict[str, list[hops.Figures]] = {store: [] for store in STORES}
    try:
        for r in range(sizes.rounds):
            for store, gateway in gateways.items():
                log.info("postgres: round %d/%d, 3-step CPU on %s", r + 1, sizes.rounds, store)
                figures = await hops.measure_one(
                    loadgen,
                    hops.Hop(store, gateway.url, service=gateway),
                    backend,
                    "/3",
                    sizes,
                    latency=False,
                    store_server=(lambda: procstat.tree_cpu_seconds(postmaster))
                    if store == "postgresql"
                    else None,
                )
                rounds[store].append(figures)
    finally:
        for gateway in gateways.values():
            lab.stop(gateway)
    out: dict[str, Any] = {
        store: {**hops.to_json(hops.median(runs)), "rounds": [hops.to_json(f) for f in runs]}
        for store, runs in rounds.items()
    }
    sqlite, pg = out["sqlite"], out["postgresql"]
    out["ratio"] = _ratio(pg["hop_cpu_ms"], sqlite["hop_cpu_ms"])
    out["ratio_with_server"] = _ratio(
        (pg["hop_cpu_ms"] or 0.0) + (pg["store_server_cpu_ms"] or 0.0), sqlite["hop_cpu_ms"]
    )
    return out


def _cluster(node_id: str) -> str:
    return f"cluster:\n  node_id: {node_id}\n"


async def _takeover(lab: Lab, backend: Service, sizes: Sizes, server: PgServer) -> dict[str, Any]:
    """Two nodes on one database. Each trial starts node A, lets a run record a step on
    it and park in the backend, kills A with SIGKILL, and times until the run's next
    attempt reaches the backend from node B. B runs throughout; A restarts (same node
    id, a new process) for every trial."""
    routes = TAKEOVER_ROUTES.format(upstream=backend.url)
    url = await server.create_database()
    b = await lab.gateway("pg-node-b", routes, store_url=url, extra_yaml=_cluster("bench-b"))
    seconds: list[float] = []
    try:
        counted_before = (await scrape(b)).get(TAKEN_OVER, 0.0)
        for trial in range(sizes.takeover_trials):
            a = await lab.gateway(
                "pg-node-a", routes, store_url=url, extra_yaml=_cluster("bench-a")
            )
            try:
                seconds.append(await _trial(a, b, backend))
            finally:
                lab.stop(a)
            log.info(
                "postgres: takeover %d/%d: %.3f s", trial + 1, sizes.takeover_trials, seconds[-1]
            )
        counted = (await scrape(b)).get(TAKEN_OVER, 0.0) - counted_before
    finally:
        lab.stop(b)
    return {
        "trials": len(seconds),
        "seconds": seconds,
        "p50_s": statistics.median(seconds),
        "max_s": max(seconds),
        "min_s": min(seconds),
        "taken_over_counted": counted,
        "observed": "the new attempt's arrival in the backend (its time.monotonic())"
        " minus the time just before SIGKILL was sent",
    }


async def _trial(a: Gateway, b: Gateway, backend: Service) -> float:
    """One kill -9 with a run in flight on `a`: seconds until `b`'s attempt arrives."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        headers = {"Prefer": "respond-async"}
        async with http.post(a.url + "/park?step=1", data=b"{}", headers=headers) as resp:
            if resp.status != 202:
                raise RuntimeError(f"takeover: node A answered {resp.status}: {await resp.text()}")
            run_id = resp.headers["Durable-Run-Id"]

        async def run() -> dict[str, Any]:
            async with http.get(f"{b.admin}/v1/runs/{run_id}") as resp:
                found: dict[str, Any] = await resp.json() if resp.status == 200 else {}
                return found

        async def attempts() -> list[dict[str, Any]]:
            async with http.get(backend.url + "/_parked") as resp:
                parked: list[dict[str, Any]] = (await resp.json())["parked"]
                return [p for p in parked if p["run_id"] == run_id]

        # In the database (b reads it there) with its step, and its attempt waiting.
        await poll(
            run,
            lambda r: "before" in {s["step_id"] for s in r.get("steps", ())},
            within=30,
            interval=0.02,
            failure=lambda r: f"takeover: the run's step never showed on node B: {r}",
        )
        await poll(
            attempts,
            bool,
            within=30,
            interval=0.02,
            failure=lambda _: "takeover: the first attempt never parked",
        )
        killed = time.monotonic()
        a.kill()
        moved = await poll(
            attempts,
            lambda found: any(p["attempt"] >= 2 for p in found),
            within=30,
            interval=0.02,
            failure=lambda found: f"takeover: no second attempt within 30 s: {found}",
        )
        arrived = min(p["arrived"] for p in moved if p["attempt"] >= 2)
        await checkpoints.release(backend)
        await poll(
            run,
            lambda r: r.get("status") == "succeeded",
            within=30,
            interval=0.05,
            failure=lambda r: f"takeover: the run did not finish on node B: {r}",
        )
    return float(arrived - killed)


async def _wake(lab: Lab, backend: Service, sizes: Sizes, server: PgServer) -> dict[str, Any]:
    """A result URL long-polled on one node while the run finishes on another: seconds
    from the backend's answer until the long-poll answers, on the other node (through
    the store's notice) and, for comparison, on the node that drove the run."""
    routes = TAKEOVER_ROUTES.format(upstream=backend.url)
    url = await server.create_database()
    a = await lab.gateway("pg-wake-a", routes, store_url=url, extra_yaml=_cluster("wake-a"))
    b = await lab.gateway("pg-wake-b", routes, store_url=url, extra_yaml=_cluster("wake-b"))
    found: dict[str, list[float]] = {"other_node": [], "same_node": []}
    try:
        for trial in range(sizes.takeover_trials):
            for where, poller in (("other_node", b), ("same_node", a)):
                found[where].append(await _wake_trial(a, poller, backend))
            log.info(
                "postgres: wake %d/%d: %.3f s on the other node, %.3f s on the same",
                trial + 1,
                sizes.takeover_trials,
                found["other_node"][-1],
                found["same_node"][-1],
            )
    finally:
        lab.stop(a)
        lab.stop(b)
    return {
        where: {"p50_s": statistics.median(v), "max_s": max(v), "seconds": v}
        for where, v in found.items()
    }


async def _wake_trial(a: Gateway, poller: Gateway, backend: Service) -> float:
    """One run parked on `a`; `poller` long-polls its result URL; the run is released."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        headers = {"Prefer": "respond-async"}
        async with http.post(a.url + "/park", data=b"{}", headers=headers) as resp:
            if resp.status != 202:
                raise RuntimeError(f"wake: node A answered {resp.status}: {await resp.text()}")
            location = resp.headers["Location"].replace(a.url, poller.url)

        async def parked() -> list[dict[str, Any]]:
            async with http.get(backend.url + "/_parked") as resp:
                return list((await resp.json())["parked"])

        await poll(parked, bool, within=30, interval=0.02, failure=lambda _: "wake: not parked")

        async def long_poll() -> float:
            async with http.get(location, headers={"Prefer": "wait=30"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"wake: the long-poll answered {resp.status}")
            return time.monotonic()

        answered = asyncio.ensure_future(long_poll())
        await asyncio.sleep(0.2)  # the long-poll is waiting
        released = time.monotonic()
        await checkpoints.release(backend)
        return await answered - released
