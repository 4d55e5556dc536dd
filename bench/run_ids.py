"""Why run ids start with their creation time: the store's cost per run, by id layout.

Writes the happy path's batches (a run created, answered at its first attempt and
finished, 400 runs a transaction) through the store's own statements
(`gateway.store.sqlite.sql.plan`) into a fresh file with the gateway's schema, once with
wholly random ids and once with the gateway's (a millisecond timestamp, then 80 random
bits), and prints the CPU each run cost as the file grows. A random key puts every run's
index entry on a page of its own, and each dirtied page is written whole to the WAL and
again at checkpoint.

    python -m bench.run_ids [--runs 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.seed import create_schema
from gateway.engine.tokens import new_run_id
from gateway.store import CreateRun, FinishRun, RecordAttempt, StoredRequest, StoredResponse, Write
from gateway.store.sqlite.sql import plan

BATCH = 400
REQUEST = StoredRequest(
    "POST",
    "/0",
    [("Host", "127.0.0.1:8080"), ("Content-Type", "application/json")],
    b'{"user":"bench","prompt":"say hello","max_tokens":16}',
)
RESPONSE = StoredResponse(200, [("Content-Type", "application/json")], b'{"ok":true}')
LAYOUTS: dict[str, Callable[[], str]] = {
    "random": lambda: secrets.token_urlsafe(16),
    "time-ordered": new_run_id,
}


def _open(path: Path) -> sqlite3.Connection:
    """A file with the gateway's schema (WAL) and its write connection's pragmas."""
    asyncio.run(create_schema(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _batch(make_id: Callable[[], str]) -> list[Write]:
    now = time.time()
    writes: list[Write] = []
    for _ in range(BATCH):
        run_id = make_id()
        writes += [
            CreateRun(run_id, "bench", REQUEST, now),
            RecordAttempt(run_id, 1, now, now, "response", 200),
            FinishRun(run_id, "succeeded", RESPONSE, now),
        ]
    return writes


def measure(make_id: Callable[[], str], runs: int, report_every: int) -> list[float]:
    """CPU µs per run (statements and SQLite, not building the writes), per stretch."""
    stretches: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        conn = _open(Path(tmp) / "runs.db")
        spent = 0.0
        for done in range(BATCH, runs + 1, BATCH):
            statements = plan(_batch(make_id))
            started = time.thread_time()
            conn.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
            spent += time.thread_time() - started
            if done % report_every == 0:
                stretches.append(spent / report_every * 1e6)
                spent = 0.0
        conn.close()
    return stretches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=200_000)
    args = parser.parse_args()
    every = max(BATCH, args.runs // 4 // BATCH * BATCH)
    marks = [f"{n:,}" for n in range(every, args.runs + 1, every)]
    print(f"CPU µs per run, in stretches of {every:,} runs, by runs in the store at the end")
    print("| run ids | " + " | ".join(marks) + " |")
    print("|---|" + "---:|" * len(marks))
    for name, make_id in LAYOUTS.items():
        row = measure(make_id, args.runs, every)
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")


if __name__ == "__main__":
    main()
