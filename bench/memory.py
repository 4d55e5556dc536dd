"""Memory check: the gateway's resident memory with many runs in flight, half waiting in
retry backoff and half suspended in a durable sleep.

Uses its own gateway and store; never leaves those runs behind in another store.
"""

from __future__ import annotations

import logging
from typing import Any

from bench.loadgen import fire
from bench.processes import Gateway, Lab, Service, poll, scrape
from bench.sizes import Sizes

log = logging.getLogger("bench")
MB = 1024 * 1024


def routes(upstream: str) -> str:
    """`/fail` answers 503 + Retry-After: 600 (backoff); `/sleep` sleeps 600 s (suspended)."""
    return f"""\
        - name: backoff
          match: {{path: /fail}}
          upstream: {upstream}
          retry: {{max_attempts: 3}}
        - name: sleep
          match: {{path: /sleep}}
          upstream: {upstream}
        """


async def settled(gateway: Gateway, runs: int, within: float = 300.0) -> dict[str, float]:
    """Wait until every run has had its first attempt and its state is committed."""
    retries = 'durable_retries_total{route="backoff"}'
    sleeps = 'durable_suspensions_total{kind="sleep"}'
    return await poll(
        lambda: scrape(gateway),
        lambda m: (
            m.get(retries, 0) >= runs
            and m.get(sleeps, 0) >= runs
            and m.get("durable_store_queue_depth", 1) == 0
        ),
        within=within,
        interval=0.2,
        failure=lambda m: (
            f"runs did not settle: retries {m.get(retries)}, sleeps "
            f"{m.get(sleeps)}, queue {m.get('durable_store_queue_depth')}"
        ),
    )


async def measure(lab: Lab, backend: Service, sizes: Sizes) -> dict[str, Any]:
    gateway = await lab.gateway("memory", routes(backend.url))
    try:
        baseline = gateway.usage()
        prefer = {"Prefer": "respond-async"}
        runs = sizes.memory_runs
        log.info("memory: %d runs into backoff, %d suspended", runs, runs)
        for path in ("/fail", "/sleep"):
            statuses = await fire(gateway.url + path, runs, 64, prefer)
            if statuses != {202: runs}:
                raise RuntimeError(f"memory {path}: expected {runs} x 202, got {statuses}")
        m = await settled(gateway, runs)
        usage = gateway.usage()
        return {
            "runs_in_backoff": runs,
            "runs_suspended": runs,
            "runs_live_in_memory": m.get("durable_runs_in_flight", 0.0),
            "baseline_rss_mb": baseline.rss_bytes / MB,
            "rss_mb": usage.rss_bytes / MB,
            "peak_rss_mb": usage.peak_rss_bytes / MB,
        }
    finally:
        lab.stop(gateway)
