"""Step errors in the store: kept in order with their run, bounded per run, purged with it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.store import (
    FinishRun,
    FullStore,
    PutStep,
    RecordAttempt,
    RecordStepError,
    StepErrorRow,
    StoredResponse,
    Write,
    schema,
)
from gateway.store.batch import TABLES, coalesce
from gateway.store.open import open_store
from gateway.store.records import STEP_ERRORS_KEPT
from gateway.store.sqlite import sql as sqlite_sql
from gateway.store.sqlite.listing import STEP_ERRORS
from tests.store.records import create

if TYPE_CHECKING:
    from tests.store.conftest import Database

OK = StoredResponse(200, [], b"ok")


def error(run_id: str, n: int, attempt: int = 1, step_id: str = "charge") -> RecordStepError:
    return RecordStepError(run_id, step_id, attempt, f"failure {n}", 100.0 + n)


async def test_errors_read_back_in_order_per_run(store: FullStore) -> None:
    await store.apply(
        [
            create("r1"),
            create("r2"),
            error("r1", 1),
            error("r2", 2, step_id="other"),
            RecordStepError("r1", "quote", 2, "é\n" + "x" * 1998, 103.5),
            error("r1", 4, attempt=2),
        ]
    )

    assert await store.list_step_errors("r1") == (
        [
            StepErrorRow("charge", 1, "failure 1", 101.0),
            StepErrorRow("quote", 2, "é\n" + "x" * 1998, 103.5),
            StepErrorRow("charge", 2, "failure 4", 104.0),
        ],
        0,
    )
    assert await store.list_step_errors("r2") == ([StepErrorRow("other", 1, "failure 2", 102.0)], 0)
    assert await store.list_step_errors("unknown") == ([], 0)


@pytest.mark.parametrize("batches", [1, 3, 130], ids=["one-batch", "three-batches", "one-each"])
async def test_a_run_keeps_its_first_errors_and_counts_the_rest(
    store: FullStore, database: Database, batches: int
) -> None:
    total = STEP_ERRORS_KEPT + 30
    writes: list[Write] = [create("loop"), create("calm"), error("calm", 0)]
    writes += [error("loop", n) for n in range(total)]
    size = -(-len(writes) // batches)
    for start in range(0, len(writes), size):
        await store.apply(writes[start : start + size])

    kept, dropped = await store.list_step_errors("loop")
    assert [row.message for row in kept] == [f"failure {n}" for n in range(STEP_ERRORS_KEPT)]
    assert dropped == total - STEP_ERRORS_KEPT
    # Another run's errors are its own: neither bounded nor counted with the loop's.
    calm = StepErrorRow("charge", 1, "failure 0", 100.0)
    assert await store.list_step_errors("calm") == ([calm], 0)
    assert await database.count("step_errors") == STEP_ERRORS_KEPT + 1


async def test_errors_are_purged_with_their_run(store: FullStore, database: Database) -> None:
    await store.apply(
        [
            create("old"),
            error("old", 1),
            error("old", 2),
            FinishRun("old", "succeeded", OK, 150.0),
            create("open"),
            error("open", 1),
        ]
    )

    assert await store.purge_before(200.0) == 1

    assert await store.list_step_errors("old") == ([], 0)
    assert len((await store.list_step_errors("open"))[0]) == 1
    assert await database.count("step_errors") == 1


async def test_a_run_created_and_finished_in_one_batch_keeps_its_errors(
    store: FullStore, database: Database
) -> None:
    # The happy path folds a run's creation, first attempt and end into one row; a failed
    # try the backend recovered from within the attempt must not stop that, nor be lost.
    writes: list[Write] = [
        create("r1"),
        error("r1", 1),
        PutStep("r1", "charge", b"1", 1, 102.0),
        RecordAttempt("r1", 1, 100.0, 103.0, "response", 200),
        FinishRun("r1", "succeeded", OK, 103.0),
    ]
    assert len(coalesce(writes)) == 3  # the run's row, the error and the step
    await store.apply(writes)

    assert await database.count("runs") == 1 and await database.count("attempts") == 0
    kept = StepErrorRow("charge", 1, "failure 1", 101.0)
    assert await store.list_step_errors("r1") == ([kept], 0)
    assert [(a.attempt, a.started_at, a.ended_at) for a in await store.list_attempts("r1")] == [
        (1, 100.0, 103.0)
    ]


def test_step_errors_are_their_own_table_in_batches() -> None:
    assert TABLES[RecordStepError] == ("step_errors",)
    assert any("step_errors" in statement for statement in sqlite_sql.PURGE)


# --- SQLite -------------------------------------------------------------------------


async def test_sqlite_error_reads_and_writes_use_the_run_key(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    await (await open_store("sqlite:///" + str(path))).close()
    with closing(sqlite3.connect(path)) as conn:
        read = str(conn.execute("EXPLAIN QUERY PLAN " + STEP_ERRORS, ("r1",)).fetchall())
        insert = sqlite_sql.plan([error("r1", 1)])[0][0]
        write = str(
            conn.execute("EXPLAIN QUERY PLAN " + insert, ("r1", "s", 1, "m", 1.0)).fetchall()
        )

    assert "sqlite_autoindex_step_errors_1 (run_id=?)" in read, read
    assert "TEMP B-TREE" not in read, read
    # The count that numbers a new error reads the run's few index entries, no rows.
    assert "COVERING INDEX sqlite_autoindex_step_errors_1 (run_id=?)" in write, write


async def test_sqlite_a_v3_database_gains_the_step_errors_table(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(schema.SQLITE_META)
        for migration in schema.MIGRATIONS:
            if migration.version <= 3:
                for statement in migration.sqlite:
                    conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")

    store = await open_store("sqlite:///" + str(path))
    try:
        assert await store.get_meta("schema_version") == str(schema.LATEST)
        await store.apply([create("r1"), error("r1", 1)])
        assert len((await store.list_step_errors("r1"))[0]) == 1
    finally:
        await store.close()
