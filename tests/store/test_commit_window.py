"""The `durability: async` window: how long a step acknowledged on queueing waits to commit.

A gateway killed inside this window loses those steps, and their backends run them again.
Prints the figures under a saturating load (`pytest -s` shows them); the README quotes them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import pytest

from gateway.store import PutStep, Store
from gateway.store.writer import Writer

PRODUCERS = 64
SECONDS = 1.5


@pytest.mark.parametrize("rate", [2_000, 20_000])
async def test_async_ack_to_commit_window(store: Store, rate: int) -> None:
    writer = Writer(store)
    writer.start()
    windows: list[float] = []
    submitted = 0
    deadline = time.perf_counter() + SECONDS

    def measure(started: float) -> Callable[[object], None]:
        return lambda _: windows.append(time.perf_counter() - started)

    async def producer(p: int) -> None:
        nonlocal submitted
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            started = time.perf_counter()
            future = writer.submit(PutStep(f"run-{p}", f"step-{n}", b'{"v":1}', 1, time.time()))
            future.add_done_callback(measure(started))
            submitted += 1
            await asyncio.sleep(PRODUCERS / rate)  # each producer is one busy backend

    await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
    await writer.close(timeout=30)
    windows.sort()
    p50 = statistics.median(windows) * 1000
    p99 = windows[int(len(windows) * 0.99)] * 1000
    print(
        f"\nasync window at {rate:,}/s offered: {submitted} step writes in {SECONDS}s "
        f"({submitted / SECONDS:,.0f}/s) in {writer.committed_batches} transactions; "
        f"ack→commit p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {windows[-1] * 1000:.2f} ms"
    )
    assert len(windows) == submitted == writer.committed_writes
    assert writer.committed_batches < submitted / 10  # group commit, not one per write
