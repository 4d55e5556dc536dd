"""Bulk seeding of a store with finished runs (each with 3 steps and 1 attempt), for the
scale check. Writes the gateway's own schema straight through sqlite3 in big batches.

Only ever writes to a file the harness made; never to a store a gateway has open.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import orjson

from gateway.engine.tokens import new_run_id
from gateway.store.open import open_store

RUN: Final = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, finished_at,"
    " wake_at, method, path_qs, req_headers, req_body, resp_status, resp_headers, resp_body,"
    " owner, lease_until) VALUES (?, ?, 'succeeded', 1, ?, ?, ?, NULL, 'POST', '/3', ?, ?, 200,"
    " ?, ?, ?, NULL)"
)
STEP: Final = (
    "INSERT INTO steps (run_id, step_id, output, attempt, created_at) VALUES (?, ?, ?, 1, ?)"
)
ATTEMPT: Final = (
    "INSERT INTO attempts (run_id, attempt, started_at, ended_at, outcome, status, detail)"
    " VALUES (?, 1, ?, ?, 'response', 200, NULL)"
)
REQ_HEADERS: Final = orjson.dumps(
    [
        ["Host", "127.0.0.1:8080"],
        ["User-Agent", "wrk"],
        ["Content-Type", "application/json"],
        ["Content-Length", "53"],
        ["X-Forwarded-For", "127.0.0.1"],
        ["X-Forwarded-Proto", "http"],
        ["X-Forwarded-Host", "127.0.0.1:8080"],
        ["traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
    ]
)
REQ_BODY: Final = b'{"user":"bench","prompt":"say hello","max_tokens":16}'
RESP_HEADERS: Final = orjson.dumps(
    [["Content-Type", "application/json; charset=utf-8"], ["Content-Length", "180"]]
)
RESP_BODY: Final = orjson.dumps(
    {
        "ok": True,
        "results": [{"step": i, "tokens": 7 * i, "text": f"result of step {i}"} for i in (1, 2, 3)],
    }
)
STEP_OUTPUTS: Final = [
    orjson.dumps({"step": i, "tokens": 7 * i, "text": f"result of step {i}"}) for i in (1, 2, 3)
]


def batches(
    count: int, size: int, now: float, rng: random.Random
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Rows for `count` runs finished over the last 6 days (inside the default 7-day
    retention, so no purge runs during the measurement), `size` runs at a time."""
    span = 6 * 86400.0
    for first in range(0, count, size):
        runs, steps, attempts = [], [], []
        for _ in range(min(size, count - first)):
            created = now - 3600 - rng.random() * span
            run_id = new_run_id(created)
            finished = created + 0.004
            runs.append(
                (
                    run_id,
                    "bench",
                    created,
                    finished,
                    finished,
                    REQ_HEADERS,
                    REQ_BODY,
                    RESP_HEADERS,
                    RESP_BODY,
                    "seed",
                )
            )
            for i, output in enumerate(STEP_OUTPUTS, 1):
                steps.append((run_id, f"step-{i}", output, created + i * 0.001))
            attempts.append((run_id, created, finished))
        yield runs, steps, attempts


async def create_schema(db_path: Path) -> None:
    """Let the gateway's own store create and migrate the file, then close it."""
    store = await open_store(f"sqlite:///{db_path}")
    await store.close()


def seed(db_path: Path, count: int, *, batch: int = 50_000, seed_value: int = 1) -> float:
    """Insert `count` finished runs; returns the seconds it took. The schema must exist."""
    began = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")  # a crash mid-seed just means seeding again
        conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: random keys touch every page
        for runs, steps, attempts in batches(count, batch, time.time(), random.Random(seed_value)):
            conn.execute("BEGIN")
            conn.executemany(RUN, runs)
            conn.executemany(STEP, steps)
            conn.executemany(ATTEMPT, attempts)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - began
