"""Latency (c=1) and throughput (c=32) of each endpoint through each target, with the
CPU and memory of the hop and of the backend.

Runs one load at a time; never changes a server's configuration between rounds.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from bench.loadgen import Loadgen, LoadResult, Plan, Shot
from bench.processes import Gateway, Service, drained, scrape
from bench.sizes import Sizes

log = logging.getLogger("bench")

ENDPOINTS = ("/0", "/3")
WRITE_SECONDS = "durable_store_write_seconds_sum"
QUEUE_DEPTH = "durable_store_queue_depth"
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Hop:
    """A way to reach the backend: straight, or through a proxy process."""

    name: str
    base: str
    prefix: str = ""
    """Put before the endpoint's path (the gateway's `durable: false` route is `/plain/*`)."""
    service: Service | None = None
    """The process in the middle; None for the direct backend."""


@dataclass(frozen=True, slots=True)
class Figures:
    """One endpoint through one hop. CPU is milliseconds per request, which is the same
    number as CPU seconds per 1,000 requests."""

    c1_p50_ms: float | None
    c1_p90_ms: float | None
    c1_p99_ms: float | None
    c1_requests: float | None
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    requests: float | None
    errors: float
    hop_cpu_ms: float | None
    backend_cpu_ms: float | None
    hop_peak_rss_mb: float | None
    backend_peak_rss_mb: float | None
    writer_busy: float | None = None
    """Gateway only: share of the c=32 load's wall time its store writer spent committing."""
    writer_backlog: float | None = None
    """Gateway only: writes queued and not committed when the c=32 load ended."""
    store_server_cpu_ms: float | None = None
    """The database server's CPU per request (PostgreSQL), when one was given to count."""

    @property
    def system_cpu_ms(self) -> float | None:
        if self.backend_cpu_ms is None:
            return None
        return (self.hop_cpu_ms or 0.0) + self.backend_cpu_ms


def median(rounds: list[Figures]) -> Figures:
    """Each figure's median over the rounds (figures of one round need not stay together)."""
    values: dict[str, Any] = {}
    for f in fields(Figures):
        column = [getattr(r, f.name) for r in rounds]
        present = [v for v in column if v is not None]
        if f.name == "errors":
            values[f.name] = sum(present)  # every error counts, not a typical round's
        else:
            values[f.name] = statistics.median(present) if present else None
    return Figures(**values)


def to_json(figures: Figures) -> dict[str, Any]:
    return {**asdict(figures), "system_cpu_ms": figures.system_cpu_ms}


async def measure_one(
    loadgen: Loadgen,
    hop: Hop,
    backend: Service,
    endpoint: str,
    sizes: Sizes,
    *,
    latency: bool = True,
    throughput: bool = True,
    store_server: Callable[[], float] | None = None,
) -> Figures:
    """Warm up, time sequential requests; warm up, load at c=32 with CPU counted around it
    (also `store_server()`'s CPU seconds, a database server's, when given)."""
    plan = Plan(hop.base, (Shot(hop.prefix + endpoint),))
    c1 = load = None
    hop_cpu = hop_rss = backend_cpu = backend_rss = writer_busy = writer_backlog = None
    server_cpu = None
    if latency:
        await loadgen.run(plan, 1, sizes.warmup)
        c1 = await loadgen.run(plan, 1, sizes.latency)
    if throughput:
        await loadgen.run(plan, sizes.connections, sizes.warmup)
        gateway = hop.service if isinstance(hop.service, Gateway) else None
        if gateway is not None:
            await drained(gateway)
        metrics_before = await scrape(gateway) if gateway else {}
        hop_before = hop.service.usage() if hop.service else None
        backend_before = backend.usage()
        server_before = store_server() if store_server else 0.0
        load = await loadgen.run(plan, sizes.connections, sizes.throughput)
        hop_after = hop.service.usage() if hop.service else None
        backend_after = backend.usage()
        server_after = store_server() if store_server else 0.0
        if gateway is not None:
            writer_busy, writer_backlog = _writer(metrics_before, await scrape(gateway), load)
            await drained(gateway)  # the next load must not share the CPU with this backlog
        per_request = 1000 / load.requests if load.requests else 0.0
        if hop_before is not None and hop_after is not None:
            hop_cpu = (hop_after.cpu_seconds - hop_before.cpu_seconds) * per_request
            hop_rss = hop_after.peak_rss_bytes / MB
        backend_cpu = (backend_after.cpu_seconds - backend_before.cpu_seconds) * per_request
        backend_rss = backend_after.peak_rss_bytes / MB
        if store_server is not None:
            server_cpu = (server_after - server_before) * per_request
    _check(hop, endpoint, c1, load)
    return Figures(
        c1_p50_ms=c1.p50_ms if c1 else None,
        c1_p90_ms=c1.p90_ms if c1 else None,
        c1_p99_ms=c1.p99_ms if c1 else None,
        c1_requests=c1.requests if c1 else None,
        rps=load.rps if load else None,
        p50_ms=load.p50_ms if load else None,
        p99_ms=load.p99_ms if load else None,
        requests=load.requests if load else None,
        errors=(c1.errors if c1 else 0) + (load.errors if load else 0),
        hop_cpu_ms=hop_cpu,
        backend_cpu_ms=backend_cpu,
        hop_peak_rss_mb=hop_rss,
        backend_peak_rss_mb=backend_rss,
        writer_busy=writer_busy,
        writer_backlog=writer_backlog,
        store_server_cpu_ms=server_cpu,
    )


def _writer(
    before: dict[str, float], after: dict[str, float], load: LoadResult
) -> tuple[float, float]:
    """The gateway's group-commit writer during a load: busy share, backlog at the end.

    A writer busy all the time with a growing backlog is the throughput ceiling: the load
    outran the store, and the gateway holds the difference in memory.
    """
    busy = after.get(WRITE_SECONDS, 0.0) - before.get(WRITE_SECONDS, 0.0)
    return busy / load.seconds if load.seconds else 0.0, after.get(QUEUE_DEPTH, 0.0)


def _check(hop: Hop, endpoint: str, *loads: LoadResult | None) -> None:
    """No answer at all means a broken set-up: stop. Errors are kept in the figures."""
    for load in loads:
        if load is None:
            continue
        if load.requests == 0:
            raise RuntimeError(f"{hop.name} {endpoint}: no request completed")
        if load.errors:
            log.warning(
                "%s %s: %d errors in %d requests", hop.name, endpoint, load.errors, load.requests
            )


async def measure(
    loadgen: Loadgen,
    hops: list[Hop],
    backend: Service,
    sizes: Sizes,
    *,
    latency: bool = True,
    throughput: bool = True,
) -> dict[str, dict[str, Any]]:
    """`{endpoint: {hop: figures and their rounds}}`; rounds interleave the hops, so a
    drift of the machine spreads over all of them rather than favouring one."""
    rounds: dict[tuple[str, str], list[Figures]] = {}
    for r in range(sizes.rounds):
        for endpoint in ENDPOINTS:
            for hop in hops:
                log.info("round %d/%d: %s via %s", r + 1, sizes.rounds, endpoint, hop.name)
                figures = await measure_one(
                    loadgen, hop, backend, endpoint, sizes, latency=latency, throughput=throughput
                )
                rounds.setdefault((endpoint, hop.name), []).append(figures)
    out: dict[str, dict[str, Any]] = {}
    for (endpoint, name), runs in rounds.items():
        out.setdefault(endpoint, {})[name] = {
            **to_json(median(runs)),
            "rounds": [to_json(f) for f in runs],
        }
    return out
