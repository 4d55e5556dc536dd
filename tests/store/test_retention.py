"""Retention: purging finished runs with everything hanging off them, and the measurement
that the SQLite file stops growing under a steady load once retention purges.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.store import (
    CreateRun,
    FinishRun,
    FullStore,
    IdempotencyKey,
    KeyRow,
    PutStep,
    RecordAttempt,
    RecordStepError,
    Store,
    StoredRequest,
    StoredResponse,
    UpdateRun,
    Write,
)
from gateway.store.sqlite import SqliteStore
from gateway.store.writer import Writer

if TYPE_CHECKING:
    from tests.store.conftest import Database

REQUEST = StoredRequest("POST", "/api/chat", [("Content-Type", "application/json")], b"{}")


def run_writes(run_id: str, *, finished_at: float | None, output: bytes = b'"out"') -> list[Write]:
    """A run with a key, two steps, a step error and an attempt; finished at `finished_at`
    unless None."""
    writes: list[Write] = [
        CreateRun(run_id, "chat", REQUEST, 10.0, idempotency=IdempotencyKey(f"key-{run_id}", "fp")),
        RecordStepError(run_id, "a", 1, "first try failed", 10.5),
        PutStep(run_id, "a", output, 1, 11.0),
        PutStep(run_id, "b", output, 1, 12.0),
        RecordAttempt(run_id, 1, 11.0, 13.0, "response", 200),
    ]
    if finished_at is not None:
        response = StoredResponse(200, [("Content-Type", "text/plain")], b"done")
        writes.append(FinishRun(run_id, "succeeded", response, finished_at))
    return writes


async def assert_gone(store: FullStore, run_id: str) -> None:
    assert await store.get_run(run_id) is None
    assert await store.load_steps(run_id) == {}
    assert await store.list_step_errors(run_id) == ([], 0)
    assert await store.list_attempts(run_id) == []
    assert await store.find_idempotency("chat", f"key-{run_id}") is None


async def assert_kept(store: FullStore, run_id: str) -> None:
    assert await store.get_run(run_id) is not None
    assert set(await store.load_steps(run_id)) == {"a", "b"}
    assert len((await store.list_step_errors(run_id))[0]) == 1
    assert len(await store.list_attempts(run_id)) == 1
    assert await store.find_idempotency("chat", f"key-{run_id}") == KeyRow("fp", run_id)


async def test_purge_deletes_old_finished_runs_with_everything_they_own(
    store: FullStore, database: Database
) -> None:
    await store.apply(
        [
            *run_writes("old-ok", finished_at=100.0),
            *run_writes("old-failed", finished_at=None),
            FinishRun("old-failed", "failed", StoredResponse(502, [], b""), 110.0),
            *run_writes("recent", finished_at=500.0),
            *run_writes("unfinished", finished_at=None),
            *run_writes("sleeping", finished_at=None),
            UpdateRun("sleeping", "backoff", 2, 50.0, 20.0),
        ]
    )

    assert await store.purge_before(300.0) == 2

    for run_id in ("old-ok", "old-failed"):
        await assert_gone(store, run_id)
    for run_id in ("recent", "unfinished", "sleeping"):
        await assert_kept(store, run_id)
    # Nothing is left behind for a deleted run, seen from outside too.
    assert await database.count("runs") == 3
    assert await database.count("steps") == 6
    assert await database.count("step_errors") == 3
    # "recent" succeeded at once, in the batch that created it: its row holds its attempt.
    assert await database.count("attempts") == 2
    assert await database.count("idempotency_keys") == 3
    assert await store.purge_before(300.0) == 0


async def test_purge_works_in_batches_of_at_most_limit(
    store: FullStore, database: Database
) -> None:
    await store.apply(
        [w for i in range(7) for w in run_writes(f"r{i}", finished_at=100.0 + i)]
        + run_writes("young", finished_at=900.0)
    )

    assert [await store.purge_before(200.0, limit=3) for _ in range(4)] == [3, 3, 1, 0]

    # Oldest first, and each batch took its runs' rows in every table with it.
    assert await database.count("runs") == await database.count("idempotency_keys") == 1
    assert await database.count("steps") == 2
    assert await database.count("step_errors") == 1
    await assert_kept(store, "young")


async def test_a_purged_key_can_be_used_again(store: Store) -> None:
    await store.apply(run_writes("r1", finished_at=100.0))
    await store.purge_before(200.0)

    await store.apply(
        [CreateRun("r2", "chat", REQUEST, 300.0, idempotency=IdempotencyKey("key-r1", "fp2"))]
    )

    assert await store.find_idempotency("chat", "key-r1") == KeyRow("fp2", "r2")


# --- the file stops growing ----------------------------------------------------------

# DURABLE_SOAK_SCALE=0.1 runs a tenth of the rounds' size for a quick look.
SCALE = float(os.environ.get("DURABLE_SOAK_SCALE", "1"))
ROUNDS = 10
RUNS_PER_ROUND = max(100, int(10_000 * SCALE))
PURGE_BATCH = 1000


def files_size(path: Path) -> int:
    """Database plus WAL after a TRUNCATE checkpoint: what the store occupies on disk."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "checkpoint blocked: a reader or writer is still in a transaction"
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_file_size_is_bounded_when_retention_purges(tmp_path: Path) -> None:
    path = tmp_path / "soak.db"
    store = await SqliteStore.open("sqlite:///" + str(path))
    writer = Writer(store)
    writer.start()
    request = StoredRequest(
        "POST", "/api/chat?user=42", [("Content-Type", "application/json")], b"q" * 200
    )
    response = StoredResponse(200, [("Content-Type", "application/json")], b"r" * 200)
    output = b'"' + b"s" * 198 + b'"'
    sizes: list[int] = []
    started = time.perf_counter()
    try:
        for round_ in range(ROUNDS):
            now = time.time()
            for i in range(RUNS_PER_ROUND):
                run_id = f"run-{round_}-{i}"
                writer.submit(
                    CreateRun(
                        run_id, "chat", request, now, idempotency=IdempotencyKey(run_id, "fp")
                    )
                )
                for step in ("plan", "call", "answer"):
                    writer.submit(PutStep(run_id, step, output, 1, now))
                writer.submit(RecordAttempt(run_id, 1, now, now, "response", 200))
                writer.submit(FinishRun(run_id, "succeeded", response, now))
            await writer.flush()
            # Retention of zero: everything that finished before now + 1 goes.
            purged = 0
            while (deleted := await store.purge_before(now + 1.0, PURGE_BATCH)) == PURGE_BATCH:
                purged += deleted
            assert purged + deleted == RUNS_PER_ROUND
            sizes.append(files_size(path))
    finally:
        await writer.close(timeout=30)
        await store.close()

    elapsed = time.perf_counter() - started
    first, last = sizes[0], sizes[-1]
    print(
        f"\nsqlite file size with retention purging: {first:,} bytes after "
        f"{RUNS_PER_ROUND:,} runs, {last:,} bytes after {ROUNDS * RUNS_PER_ROUND:,} runs "
        f"(x{last / first:.2f}; per round: {', '.join(f'{s:,}' for s in sizes)}; "
        f"{elapsed:.1f} s)"
    )
    assert last <= 1.5 * first
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
