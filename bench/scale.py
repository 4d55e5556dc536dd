"""Scale check: 3-step throughput on an empty store against one holding many finished runs.

Each measurement gets its own gateway process on its own file; the seeded file is made
before any gateway opens it.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from typing import Any

from bench import seed
from bench.loadgen import Loadgen, Plan, Shot
from bench.processes import Lab, Service, drained
from bench.sizes import Sizes

log = logging.getLogger("bench")


def routes(upstream: str) -> str:
    return f"""\
        - name: bench
          match: {{path: /*}}
          upstream: {upstream}
        """


async def throughput(
    lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes, name: str, db: Any
) -> float:
    gateway = await lab.gateway(name, routes(backend.url), db_path=db)
    try:
        plan = Plan(gateway.url, (Shot("/3"),))
        await loadgen.run(plan, sizes.connections, sizes.warmup)
        await drained(gateway)
        load = await loadgen.run(plan, sizes.connections, sizes.throughput)
        if load.requests == 0 or load.errors:
            raise RuntimeError(f"scale {name}: {load.requests} requests, {load.errors} errors")
        return load.rps
    finally:
        lab.stop(gateway)


async def measure(lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes) -> dict[str, Any]:
    seeded = lab.workdir / "scale-seeded.db"
    await seed.create_schema(seeded)
    log.info("scale: seeding %d finished runs", sizes.scale_runs)
    seconds = await asyncio.to_thread(seed.seed, seeded, sizes.scale_runs)
    log.info("scale: seeded in %.1f s", seconds)
    empty: list[float] = []
    full: list[float] = []
    for r in range(sizes.rounds):  # alternate, so drift hits both alike
        empty_db = lab.workdir / f"scale-empty-{r}.db"
        empty.append(await throughput(lab, backend, loadgen, sizes, f"scale-empty-{r}", empty_db))
        full.append(await throughput(lab, backend, loadgen, sizes, f"scale-seeded-{r}", seeded))
    empty_rps, seeded_rps = statistics.median(empty), statistics.median(full)
    return {
        "seeded_runs": sizes.scale_runs,
        "seed_seconds": seconds,
        "db_mb": seeded.stat().st_size / (1024 * 1024),
        "empty_rps": empty_rps,
        "seeded_rps": seeded_rps,
        "ratio": seeded_rps / empty_rps if empty_rps else 0.0,
        "rounds": {"empty": empty, "seeded": full},
    }
