"""100,000 pending timers on SQLite: due claims and the next wake time read an index, so
they cost the same at 10k and 100k suspended runs. Prints the timings; asserts only
how they grow, never absolute times.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

from gateway.store import FullStore
from gateway.store.open import open_store

T = TypeVar("T")

NOW = 1_700_000_000.0
SPAN = 1_000_000.0
"""Wake times spread over this many seconds after NOW."""
PAGE = 500
ROUNDS = 5

INSERT_RUN = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, wake_at,"
    " method, path_qs, req_headers, req_body)"
    " VALUES (?, 'chat', 'suspended', 1, ?, ?, ?, 'POST', '/api/chat', X'5b5d', ?)"
)
INSERT_PENDING = (
    "INSERT INTO pending (run_id, step_id, kind, wake_at, event, match, created_at)"
    " VALUES (?, 'step', ?, ?, ?, ?, ?)"
)


async def suspended_store(
    path: Path, count: int, seed: int
) -> tuple[FullStore, list[tuple[float, str]]]:
    """A store holding `count` suspended runs with random wake times, written in bulk
    around the store (one transaction); returns it and (wake time, run id), sorted."""
    store = await open_store("sqlite:///" + str(path))
    await store.close()
    rng = random.Random(seed)
    body = b'{"prompt":"' + b"p" * 200 + b'"}'
    runs: list[tuple[str, float, float, float, bytes]] = []
    pending: list[tuple[str, str, float, str | None, bytes | None, float]] = []
    for i in range(count):
        run_id = f"run-{i:07d}-{rng.getrandbits(64):016x}"
        created = NOW - rng.random() * 3600
        wake = NOW + rng.random() * SPAN
        runs.append((run_id, created, created, wake, body))
        if i % 4:
            pending.append((run_id, "sleep", wake, None, None, created))
        else:
            pending.append((run_id, "wait", wake, "payment", b'{"data.id":"1"}', created))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(INSERT_RUN, runs)
        conn.executemany(INSERT_PENDING, pending)
        conn.execute("COMMIT")
    return await open_store("sqlite:///" + str(path)), sorted((run[3], run[0]) for run in runs)


async def fastest(rounds: int, call: Callable[[], Awaitable[T]]) -> tuple[float, list[T]]:
    """The shortest of `rounds` timed calls, in seconds, and every call's result."""
    best = float("inf")
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        results.append(await call())
        best = min(best, time.perf_counter() - started)
    return best, results


async def measure(tmp_path: Path, count: int) -> dict[str, float]:
    store, wakes = await suspended_store(tmp_path / f"timers-{count}.db", count, seed=count)
    try:
        assert await store.count_pending() == {"sleep": count - count // 4, "wait": count // 4}
        next_time, nexts = await fastest(20, store.next_wake_at)
        assert nexts == [wakes[0][0]] * 20

        # Half the timers are due: every round claims the next 500 earliest.
        now = NOW + SPAN / 2
        claim_time, pages = await fastest(ROUNDS, lambda: store.claim_due("node", now, 30.0, PAGE))
        claimed = [row.run_id for page in pages for row in page]
        assert [len(page) for page in pages] == [PAGE] * ROUNDS
        assert all(row.status == "running" and row.owner == "node" for p in pages for row in p)
        after_time, after = await fastest(5, store.next_wake_at)
        assert after == [wakes[PAGE * ROUNDS][0]] * 5

        count_time, _ = await fastest(5, store.count_pending)
        timers_time, timers = await fastest(5, store.count_timers)
        assert timers == [count - PAGE * ROUNDS] * 5
        recover_time, recovered = await fastest(3, lambda: store.claim_unfinished("x", now, 30.0))
        renew_time, _ = await fastest(3, lambda: store.renew_leases("node", now + 60.0))
    finally:
        await store.close()
    # Earliest first, page after page.
    assert claimed == [run_id for _, run_id in wakes[: PAGE * ROUNDS]]
    # Claimed runs' leases are live: recovery on another node takes none of them.
    assert recovered == [[], [], []]
    print(
        f"\n{count:>7,} suspended runs: claim_due({PAGE}) {claim_time * 1000:.2f} ms, "
        f"next_wake_at {next_time * 1000:.3f} ms (after claims {after_time * 1000:.3f} ms), "
        f"count_pending {count_time * 1000:.2f} ms, count_timers {timers_time * 1000:.2f} ms, "
        f"claim_unfinished "
        f"{recover_time * 1000:.3f} ms, renew_leases {renew_time * 1000:.2f} ms"
    )
    return {"claim": claim_time, "next": next_time, "recover": recover_time}


async def test_due_reads_cost_the_same_at_10k_and_100k_timers(tmp_path: Path) -> None:
    small = await measure(tmp_path, 10_000)
    large = await measure(tmp_path, 100_000)

    # A scan would grow 10x with the runs; an index read grows with log(n) at most.
    assert large["claim"] < 10 * small["claim"], (small, large)
    assert large["next"] < 10 * small["next"], (small, large)
    # Parked runs are out of the lease index: recovery never reads them.
    assert large["recover"] < 10 * small["recover"], (small, large)
