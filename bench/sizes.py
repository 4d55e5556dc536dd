"""How long and how big each benchmark section is: the full run and the quick smoke run.

Plain data; never measures anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Sizes:
    warmup: float
    """Seconds of load before every measured load (discarded)."""
    latency: float
    """Seconds of sequential (c=1) requests per endpoint and target."""
    throughput: float
    """Seconds of c=`connections` load per endpoint and target, and per store/scale load."""
    connections: int
    rounds: int
    """Each latency/throughput/scale figure is the median of this many rounds."""
    store_runs: int
    """Runs parked open for the checkpoint load; its writes are spread over them."""
    put_samples: int
    """Sequential step writes timed by the backend for the c=1 PUT latency."""
    scale_runs: int
    """Finished runs seeded into the store for the scale check."""
    memory_runs: int
    """Runs in backoff, and as many suspended, for the memory check."""


FULL = Sizes(
    warmup=2.0,
    latency=5.0,
    throughput=10.0,
    connections=32,
    rounds=3,
    store_runs=64,
    put_samples=1000,
    scale_runs=1_000_000,
    memory_runs=10_000,
)

QUICK = Sizes(
    warmup=0.2,
    latency=0.5,
    throughput=1.0,
    connections=32,
    rounds=1,
    store_runs=8,
    put_samples=100,
    scale_runs=10_000,
    memory_runs=200,
)


def choose(quick: bool, duration: float | None, rounds: int | None) -> Sizes:
    sizes = QUICK if quick else FULL
    if duration is not None:
        sizes = replace(sizes, throughput=duration)
    if rounds is not None:
        sizes = replace(sizes, rounds=rounds)
    return sizes
