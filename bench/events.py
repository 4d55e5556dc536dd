"""What one event costs the event loop with many waits pending on its name.

`index`: the store's `add_event`, which stores the event and completes the waits it
fits in one transaction, found through the match index. `scan`: the way before it,
kept here to compare: every pending wait of the name read, matched in Python one by one
(`first_match`), each match completed in a transaction of its own. Loop time is the CPU
time of the thread that runs the event loop (the SQLite work runs in aiosqlite's
thread); wall time is how long the event took. Medians over the rounds.

    python -m bench.events [--waits 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import orjson

from gateway.engine.suspensions import first_match
from gateway.store import CreateRun, FullStore, PutPending, StoredRequest, SuspendRun, Write
from gateway.store.open import open_store
from step_protocol import wire

REQUEST = StoredRequest("POST", "/ship", [("Content-Type", "application/json")], b"{}")
NAME = "order.paid"
# The former read: every wait of the name of a suspended run, oldest first.
SCAN = (
    "SELECT p.run_id, p.step_id, p.match FROM pending AS p JOIN runs AS r"
    " ON r.run_id = p.run_id WHERE p.kind = 'wait' AND p.event = ?"
    " AND r.status = 'suspended' ORDER BY p.created_at LIMIT 10000"
)


async def seeded(path: Path, waits: int, match: Callable[[int], dict[str, str]]) -> FullStore:
    """A fresh store with `waits` suspended runs, each waiting for NAME with `match(i)`."""
    store = await open_store(f"sqlite:///{path}")
    now = time.time()
    for start in range(0, waits, 500):
        writes: list[Write] = []
        for i in range(start, min(waits, start + 500)):
            run_id = f"run-{i:06d}"
            writes += [
                CreateRun(run_id, "ship", REQUEST, now),
                PutPending(run_id, "paid", "wait", None, NAME, orjson.dumps(match(i)), now),
                SuspendRun(run_id, 1, None, now),
            ]
        await store.apply(writes)
    return store


async def by_index(store: FullStore, path: Path, event_id: str, data: bytes) -> int:
    added = await store.add_event(event_id, NAME, data, time.time())
    return len(added.completed)


async def by_scan(store: FullStore, path: Path, event_id: str, data: bytes) -> int:
    now = time.time()
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.execute(
            "INSERT INTO events (event_id, name, data, ts) VALUES (?, ?, ?, ?)",
            (event_id, NAME, data, now),
        )
        async with conn.execute(SCAN, (NAME,)) as cur:
            rows = list(await cur.fetchall())
    event = (wire.event_output(event_id, NAME, orjson.loads(data), now),)
    matched = 0
    for run_id, step_id, match in rows:
        output = first_match(bytes(match), event)
        if output is not None and await store.complete_wait(run_id, step_id, output, now):
            matched += 1
    return matched


Post = Callable[[FullStore, Path, str, bytes], Awaitable[int]]
MODES: dict[str, Post] = {"scan": by_scan, "index": by_index}
# (name, each wait's match, the data of round r's event, waits one event completes)
CASES: list[tuple[str, Callable[[int], dict[str, str]], Callable[[int], bytes], str]] = [
    ("fits one", lambda i: {"data.order_id": str(i)}, lambda r: b'{"order_id":"%d"}' % r, "1"),
    ("fits none", lambda i: {"data.order_id": str(i)}, lambda r: b'{"order_id":"x"}', "0"),
    ("fits all", lambda i: {}, lambda r: b'{"order_id":"1"}', "all"),
]


async def measure(
    workdir: Path, waits: int, rounds: int, mode: str, case: int
) -> tuple[float, float, int]:
    """Median loop and wall milliseconds of one event, and the waits the last one completed."""
    _, match, data, _ = CASES[case]
    path = workdir / f"{mode}-{case}.db"
    store = await seeded(path, waits, match)
    post = MODES[mode]
    loop_ms: list[float] = []
    wall_ms: list[float] = []
    matched = 0
    try:
        for r in range(1 if CASES[case][3] == "all" else rounds):
            cpu, began = time.thread_time(), time.perf_counter()
            matched = await post(store, path, f"e-{r}", data(r))
            loop_ms.append((time.thread_time() - cpu) * 1000)
            wall_ms.append((time.perf_counter() - began) * 1000)
    finally:
        await store.close()
    return statistics.median(loop_ms), statistics.median(wall_ms), matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"one event, {args.waits:,} waits pending on its name (medians)\n")
    print("| case | way | waits completed | loop ms | wall ms |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for case, (name, *_) in enumerate(CASES):
            for mode in MODES:
                loop, wall, matched = asyncio.run(
                    measure(Path(tmp), args.waits, args.rounds, mode, case)
                )
                print(f"| {name} | {mode} | {matched:,} | {loop:.2f} | {wall:.2f} |")


if __name__ == "__main__":
    main()
