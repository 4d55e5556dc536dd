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
    sse_requests: int
    """Sequential SSE requests timed per target and round."""
    sse_warmup: int
    """Sequential SSE requests sent, untimed, before those of each target and round."""
    sse_gap_ms: float
    """Milliseconds between the events of one SSE response after the first."""
    big_body_mib: int
    """MiB of the big streamed body, through each target once per round."""
    takeover_trials: int
    """Times a node is killed (-9) with a run in flight, for the takeover time."""


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
    sse_requests=1000,
    sse_warmup=100,
    sse_gap_ms=2.0,
    big_body_mib=1024,
    takeover_trials=10,
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
    sse_requests=20,
    sse_warmup=5,
    sse_gap_ms=1.0,
    big_body_mib=16,
    takeover_trials=2,
)


def choose(
    quick: bool, duration: float | None, rounds: int | None, big_body_mib: int | None = None
) -> Sizes:
    sizes = QUICK if quick else FULL
    if big_body_mib is not None:
        sizes = replace(sizes, big_body_mib=big_body_mib)
    if duration is not None:
        sizes = replace(sizes, throughput=duration)
    if rounds is not None:
        sizes = replace(sizes, rounds=rounds)
    return sizes
