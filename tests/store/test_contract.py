"""The Store contract: every database in conftest.DATABASES must pass these unchanged.

SQLite-only details (url parsing, migrations, write grouping) follow at the end.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, cast

import aiosqlite
import pytest

from gateway.errors import StoreRejected, StoreUnavailable
from gateway.store import (
    PARKED_STATUSES,
    AttemptRow,
    CreateRun,
    FinishRun,
    IdempotencyKey,
    KeyRow,
    PutStep,
    RecordAttempt,
    ReplaceResult,
    Store,
    StoredRequest,
    StoredResponse,
    UpdateRun,
    Write,
    schema,
)
from gateway.store.batch import group_writes
from gateway.store.open import TEST_MAX_LENGTH_ENV, TEST_MAX_PAGES_ENV, open_store
from gateway.store.records import FINAL_STATUSES
from gateway.store.sqlite import SqliteStore, describe_error, path_from_url
from gateway.store.sqlite import sql as sqlite_sql
from gateway.store.sqlite.connection import refused_for_good
from gateway.store.sqlite.migrate import migrate_sqlite
from tests.store import records

if TYPE_CHECKING:
    from tests.store.conftest import Database

ALL_BYTES = bytes(range(256))
# Repeated names keep their order; a non-UTF-8 header byte arrives from aiohttp as a
# surrogate escape and must come back unchanged.
HEADERS = [
    ("Content-Type", "application/octet-stream"),
    ("X-Tag", "a"),
    ("X-Tag", "b"),
    ("X-Raw", "caf\udce9"),
]


REQUEST = StoredRequest("POST", "/api/chat", [], b"{}")
ROUND_TRIP = StoredRequest("POST", "/api/chat?x=1", HEADERS, ALL_BYTES)
create = functools.partial(records.create, request=ROUND_TRIP)
"""Runs here carry every byte value and awkward headers, so each test also round-trips them."""


def step(run_id: str, step_id: str, output: bytes = b'{"ok":true}', attempt: int = 1) -> PutStep:
    return PutStep(run_id, step_id, output, attempt, 101.0)


async def test_create_and_get_run_round_trip(store: Store) -> None:
    await store.apply([create("r1", at=100.5)])

    run = await store.get_run("r1")

    assert run is not None
    assert (run.run_id, run.route, run.status, run.attempt) == ("r1", "chat", "running", 1)
    assert (run.owner, run.lease_until) == (None, None)
    assert (run.created_at, run.updated_at, run.finished_at, run.wake_at) == (
        100.5,
        100.5,
        None,
        None,
    )
    assert run.request == ROUND_TRIP
    assert run.response is None


async def test_get_run_of_unknown_id_is_none(store: Store) -> None:
    assert await store.get_run("nope") is None


async def test_create_run_twice_keeps_the_first(store: Store) -> None:
    await store.apply([create("r1", body=b"first")])
    await store.apply([create("r1", body=b"second")])

    run = await store.get_run("r1")

    assert run is not None and run.request.body == b"first"


async def test_put_step_first_write_wins(store: Store) -> None:
    await store.apply([create("r1"), step("r1", "a", b'"one"')])
    await store.apply([step("r1", "a", b'"two"', attempt=2)])
    # Within one batch too.
    await store.apply([step("r1", "b", b'"three"'), step("r1", "b", b'"four"')])

    assert await store.load_steps("r1") == {"a": b'"one"', "b": b'"three"'}


async def test_load_steps_returns_only_that_runs_steps(store: Store) -> None:
    big = b'"' + b"x" * 100_000 + b'"'
    await store.apply(
        [
            create("r1"),
            create("r2"),
            step("r1", "fetch", b'{"n":1}'),
            step("r2", "fetch", b'{"n":2}'),
            step("r1", "loop:1", big),
            step("r1", "\u00e9t\u00e9 " + "s" * 250, b"[]"),
        ]
    )

    assert await store.load_steps("r1") == {
        "fetch": b'{"n":1}',
        "loop:1": big,
        "\u00e9t\u00e9 " + "s" * 250: b"[]",
    }
    assert await store.load_steps("r2") == {"fetch": b'{"n":2}'}
    assert await store.load_steps("unknown") == {}


async def test_record_attempt_upserts_and_lists_in_order(store: Store) -> None:
    await store.apply(
        [
            create("r1"),
            RecordAttempt("r1", 2, 10.0, 10.0, "response", 503, None),
            RecordAttempt("r1", 1, 1.0, 2.0, "connect_error", None, "refused"),
        ]
    )
    await store.apply(
        [
            RecordAttempt("r1", 3, 20.0, 21.0, "timeout"),
            RecordAttempt("r1", 2, 10.0, 12.5, "response", 502, "bad gateway"),
        ]
    )

    assert await store.list_attempts("r1") == [
        AttemptRow(1, 1.0, 2.0, "connect_error", None, "refused"),
        AttemptRow(2, 10.0, 12.5, "response", 502, "bad gateway"),
        AttemptRow(3, 20.0, 21.0, "timeout", None, None),
    ]
    assert await store.list_attempts("other") == []


async def test_a_first_attempt_reads_back_the_same_however_its_run_was_batched(
    store: Store,
) -> None:
    ok, bad = StoredResponse(200, [], b"done"), StoredResponse(500, [], b"no")
    # One batch each: the happy path (which a store may keep in the run row alone),
    # a final failure, and a success whose run was created in an earlier batch.
    await store.apply([create("late", at=5.0)])
    await store.apply(
        [
            create("happy", at=1.0),
            RecordAttempt("happy", 1, 1.0, 2.0, "response", 200),
            FinishRun("happy", "succeeded", ok, 2.0),
            create("failed", at=1.0),
            RecordAttempt("failed", 1, 1.0, 2.0, "response", 500),
            FinishRun("failed", "failed", bad, 2.0),
            RecordAttempt("late", 1, 5.5, 6.0, "response", 200),
            FinishRun("late", "succeeded", ok, 6.0),
        ]
    )

    assert await store.list_attempts("happy") == [AttemptRow(1, 1.0, 2.0, "response", 200, None)]
    assert await store.list_attempts("failed") == [AttemptRow(1, 1.0, 2.0, "response", 500, None)]
    assert await store.list_attempts("late") == [AttemptRow(1, 5.5, 6.0, "response", 200, None)]


async def test_update_run_sets_status_attempt_and_wake(store: Store) -> None:
    await store.apply([create("r1", at=100.0), UpdateRun("r1", "sleeping", 2, 500.0, 150.0)])

    run = await store.get_run("r1")

    assert run is not None
    assert (run.status, run.attempt, run.wake_at, run.updated_at) == ("sleeping", 2, 500.0, 150.0)
    assert (run.created_at, run.finished_at, run.response) == (100.0, None, None)


async def test_finish_run_stores_a_binary_response_and_clears_wake(store: Store) -> None:
    response = StoredResponse(201, [("Content-Type", "image/png"), ("X-A", "1")], ALL_BYTES * 3)
    await store.apply(
        [
            create("r1", at=100.0),
            UpdateRun("r1", "waiting", 1, 999.0, 120.0),
            FinishRun("r1", "succeeded", response, 130.0),
        ]
    )

    run = await store.get_run("r1")

    assert run is not None
    assert (run.status, run.finished_at, run.updated_at, run.wake_at) == (
        "succeeded",
        130.0,
        130.0,
        None,
    )
    assert run.response == response
    assert run.request.body == ALL_BYTES


async def test_a_batch_keeps_each_runs_order(store: Store) -> None:
    """Interleaved writes of several runs in one batch end as if applied one by one."""
    done = StoredResponse(200, [], b"done")
    await store.apply(
        [
            create("a"),
            create("b"),
            UpdateRun("a", "running", 1, None, 101.0),
            step("a", "s1"),
            UpdateRun("b", "running", 1, None, 101.0),
            UpdateRun("a", "sleeping", 1, 300.0, 102.0),
            FinishRun("b", "succeeded", done, 103.0),
            create("c"),
            UpdateRun("a", "running", 2, None, 104.0),
            UpdateRun("b", "bogus-after-finish", 1, 5.0, 105.0),
            RecordAttempt("a", 1, 1.0, 2.0, "suspended"),
            FinishRun("a", "failed", done, 106.0),
        ]
    )

    a, b, c = [await store.get_run(r) for r in ("a", "b", "c")]
    assert a is not None and b is not None and c is not None
    assert (a.status, a.attempt, a.wake_at, a.finished_at) == ("failed", 2, None, 106.0)
    # An UpdateRun after the FinishRun changes nothing: a final result is never undone
    # (a node that lost the run may still have such a write queued).
    assert (b.status, b.wake_at, b.updated_at, b.finished_at) == ("succeeded", None, 103.0, 103.0)
    assert c.status == "running"


async def test_a_finished_run_is_never_finished_again(store: Store) -> None:
    first, second = StoredResponse(200, [], b"first"), StoredResponse(500, [], b"second")
    await store.apply([create("r"), FinishRun("r", "succeeded", first, 2.0)])
    await store.apply(
        [FinishRun("r", "failed", second, 3.0), UpdateRun("r", "backoff", 2, 9.0, 3.0)]
    )
    run = await store.get_run("r")
    assert run is not None and run.response is not None
    assert (run.status, run.response.body, run.finished_at, run.attempt) == (
        "succeeded",
        b"first",
        2.0,
        1,
    )


async def test_a_replaced_result_overwrites_the_first(store: Store) -> None:
    """The node that finished a run replaces its result when the store refused part of
    it (a chunk of its streamed body): the one write allowed over a final result."""
    first, problem = StoredResponse(200, [], b"", kept=70_000), StoredResponse(500, [], b"p")
    await store.apply([create("r"), FinishRun("r", "succeeded", first, 2.0)])
    await store.apply([ReplaceResult("r", "failed", problem, 3.0)])
    run = await store.get_run("r")
    assert run is not None and run.response is not None
    assert (run.status, run.response.body, run.finished_at) == ("failed", b"p", 3.0)


async def test_meta_set_if_absent_returns_the_first_value(store: Store) -> None:
    assert await store.get_meta("secret") is None

    assert await store.set_meta_if_absent("secret", "s3cr3t") == "s3cr3t"
    assert await store.set_meta_if_absent("secret", "other") == "s3cr3t"
    assert await store.get_meta("secret") == "s3cr3t"
    assert await store.get_meta("schema_version") == str(schema.LATEST)


async def test_empty_apply_is_a_no_op(store: Store) -> None:
    await store.apply([])

    assert await store.get_run("r1") is None


async def test_apply_is_all_or_nothing_when_a_statement_fails(
    store: Store, database: Database
) -> None:
    await database.fail_step_insert("boom")
    await store.apply([create("old")])
    batch: list[Write] = [
        create("r1"),
        step("r1", "ok"),
        RecordAttempt("r1", 1, 1.0, 2.0, "response", 500),
        UpdateRun("old", "sleeping", 3, 9.0, 9.0),
        step("r1", "boom"),
        FinishRun("r1", "succeeded", StoredResponse(200, [], b"x"), 3.0),
    ]

    with pytest.raises(StoreRejected) as info:
        await store.apply(batch)

    assert info.value.__cause__ is not None
    assert await store.get_run("r1") is None
    assert await store.load_steps("r1") == {}
    assert await store.list_attempts("r1") == []
    old = await store.get_run("old")
    assert old is not None and old.status == "running"
    assert await database.count("steps") == 0
    # The connection is left usable: the next batch commits.
    await store.apply([create("r2"), step("r2", "ok")])
    assert await store.load_steps("r2") == {"ok": b'{"ok":true}'}


async def _reads_during_a_failing_batch(store: Store) -> tuple[int, int]:
    """Read a run over and over while a batch creating it fails; (reads, sightings)."""
    # A value no driver can bind: the last statement fails mid-transaction.
    poison = PutStep("r1", "poison", cast(bytes, object()), 1, 1.0)
    churn: list[Write] = []
    for i in range(50):  # alternating kinds on one run: one statement (await) each
        churn.append(UpdateRun("r1", "running", i, None, float(i)))
        churn.append(FinishRun("r1", "failed", StoredResponse(500, [], b""), float(i)))
    reads = sightings = 0
    failed = False

    async def reader() -> None:
        nonlocal reads, sightings
        while not failed:
            sightings += await store.get_run("r1") is not None
            reads += 1

    async def writer() -> None:
        nonlocal failed
        try:
            with pytest.raises(StoreRejected):
                await store.apply([create("r1"), *churn, poison])
        finally:
            failed = True

    await asyncio.gather(writer(), reader(), reader(), reader())
    return reads, sightings


async def test_reads_never_see_a_batch_before_it_commits(store: Store) -> None:
    reads, sightings = await _reads_during_a_failing_batch(store)

    assert reads > 0
    assert sightings == 0
    assert await store.get_run("r1") is None


async def test_apply_raises_store_unavailable_while_locked(database: Database) -> None:
    store = await database.open(lock_wait=0.05)
    try:
        async with database.hold_write_lock():
            with pytest.raises(StoreUnavailable):
                await store.apply([create("r1"), step("r1", "a")])
            # Reads are not blocked by another writer.
            assert await store.get_run("r1") is None
        assert await database.count("runs") == 0
        await store.apply([create("r1"), step("r1", "a")])
        assert await store.load_steps("r1") == {"a": b'{"ok":true}'}
    finally:
        await store.close()


async def test_reopen_keeps_data_and_does_not_rerun_migrations(database: Database) -> None:
    first = await database.open()
    await first.apply([create("r1"), step("r1", "a")])
    assert await first.set_meta_if_absent("secret", "kept") == "kept"
    await first.close()

    # Migrations use plain CREATE TABLE, so running them again would fail here.
    second = await database.open()
    try:
        assert await second.load_steps("r1") == {"a": b'{"ok":true}'}
        assert await second.get_meta("secret") == "kept"
        assert await second.get_meta("schema_version") == str(schema.LATEST)
    finally:
        await second.close()


async def test_a_closed_store_refuses_calls(database: Database) -> None:
    store = await database.open()
    await store.close()
    await store.close()  # idempotent

    with pytest.raises(StoreUnavailable):
        await store.get_run("r1")
    with pytest.raises(StoreUnavailable):
        await store.apply([create("r1")])


async def test_idempotency_key_is_stored_with_its_run(store: Store) -> None:
    await store.apply(
        [CreateRun("r1", "chat", REQUEST, 100.0, idempotency=IdempotencyKey("k1", "fp-1"))]
    )

    assert await store.find_idempotency("chat", "k1") == KeyRow("fp-1", "r1")
    assert await store.find_idempotency("other-route", "k1") is None
    assert await store.find_idempotency("chat", "k2") is None


async def test_idempotency_key_conflict_keeps_the_first(store: Store) -> None:
    await store.apply(
        [CreateRun("r1", "chat", REQUEST, 100.0, idempotency=IdempotencyKey("k", "fp-1"))]
    )
    await store.apply(
        [
            CreateRun("r2", "chat", REQUEST, 101.0, idempotency=IdempotencyKey("k", "fp-2")),
            # Within one batch too; and the same key on another route is another key.
            CreateRun("r3", "chat", REQUEST, 102.0, idempotency=IdempotencyKey("k", "fp-3")),
            CreateRun("r4", "admin", REQUEST, 103.0, idempotency=IdempotencyKey("k", "fp-4")),
        ]
    )

    assert await store.find_idempotency("chat", "k") == KeyRow("fp-1", "r1")
    assert await store.find_idempotency("admin", "k") == KeyRow("fp-4", "r4")
    # The key is ignored, not the run: the caller decided to admit it.
    assert await store.get_run("r2") is not None


async def test_create_keyed_writes_nothing_when_the_key_is_taken(store: Store) -> None:
    first = CreateRun("r1", "chat", REQUEST, 100.0, idempotency=IdempotencyKey("k", "fp-1"))
    assert await store.create_keyed(first) is None
    assert (await store.get_run("r1")) is not None  # committed on return
    again = CreateRun("r2", "chat", REQUEST, 101.0, idempotency=IdempotencyKey("k", "fp-2"))
    assert await store.create_keyed(again) == KeyRow("fp-1", "r1")
    assert await store.get_run("r2") is None
    other = CreateRun("r3", "admin", REQUEST, 102.0, idempotency=IdempotencyKey("k", "fp-3"))
    assert await store.create_keyed(other) is None  # keys are per route
    with pytest.raises(ValueError, match="idempotency key"):
        await store.create_keyed(CreateRun("r4", "chat", REQUEST, 103.0))


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # SQLite: one process
async def test_create_keyed_from_two_stores_at_once_creates_one_run(
    database: Database,
) -> None:
    """Two nodes admitting duplicates at the same moment: one run, both agree on it."""
    stores = [await database.open() for _ in range(2)]
    try:
        for n in range(20):
            writes = [
                CreateRun(
                    f"r{n}-{i}", "chat", REQUEST, 100.0, idempotency=IdempotencyKey(f"k{n}", "fp")
                )
                for i in range(2)
            ]
            found = await asyncio.gather(
                *(s.create_keyed(w) for s, w in zip(stores, writes, strict=True))
            )
            winners = [w.run_id for w, f in zip(writes, found, strict=True) if f is None]
            assert len(winners) == 1, found
            assert {f.run_id for f in found if f is not None} == set(winners)
            assert [await stores[0].get_run(w.run_id) is not None for w in writes].count(True) == 1
    finally:
        for s in stores:
            await s.close()


async def test_idempotency_key_is_never_stored_without_its_run(
    store: Store, database: Database
) -> None:
    await database.fail_step_insert("boom")

    with pytest.raises(StoreRejected):
        await store.apply(
            [
                CreateRun("r1", "chat", REQUEST, 100.0, idempotency=IdempotencyKey("k", "fp")),
                step("r1", "boom"),
            ]
        )

    assert await store.find_idempotency("chat", "k") is None
    assert await database.count("idempotency_keys") == 0


# --- SQLite specifics ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative/path.db", "relative/path.db"),
        ("sqlite:///./durable.db", "./durable.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_url_to_path(url: str, path: str) -> None:
    assert path_from_url(url) == path


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:x.db", "sqlite://host/x.db"])
def test_sqlite_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        path_from_url(url)


async def test_sqlite_relative_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///nested/dir/gw.db")
    try:
        await store.apply([create("r1")])
    finally:
        await store.close()

    with sqlite3.connect(tmp_path / "nested" / "dir" / "gw.db") as conn:
        assert conn.execute("SELECT run_id FROM runs").fetchall() == [("r1",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_sqlite_memory_store_round_trips() -> None:
    store = await open_store("sqlite:///:memory:")
    try:
        await store.apply([create("r1"), step("r1", "a")])
        assert await store.load_steps("r1") == {"a": b'{"ok":true}'}
    finally:
        await store.close()


async def test_sqlite_memory_store_reads_never_see_uncommitted_writes() -> None:
    """One shared connection in memory mode: reads must wait for the transaction."""
    store = await open_store("sqlite:///:memory:")
    try:
        reads, sightings = await _reads_during_a_failing_batch(store)
    finally:
        await store.close()

    assert reads > 0
    assert sightings == 0


async def test_sqlite_migrations_apply_once_and_in_order(tmp_path: Path) -> None:
    extra = schema.Migration(
        version=schema.LATEST + 1,
        sqlite=("CREATE TABLE extra (x INTEGER)",),
        postgres=("CREATE TABLE extra (x INTEGER)",),
    )
    async with aiosqlite.connect(tmp_path / "m.db", isolation_level=None) as conn:
        assert await migrate_sqlite(conn) == [m.version for m in schema.MIGRATIONS]
        assert await migrate_sqlite(conn) == []
        assert await migrate_sqlite(conn, (*schema.MIGRATIONS, extra)) == [extra.version]
        assert await migrate_sqlite(conn, (*schema.MIGRATIONS, extra)) == []
        # Old code meeting the newer database refuses it, and changes nothing.
        with pytest.raises(StoreUnavailable, match="newer"):
            await migrate_sqlite(conn)
        async with conn.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
            assert await cur.fetchone() == (str(extra.version),)
        assert not conn.in_transaction


async def test_sqlite_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = schema.Migration(
        version=schema.LATEST + 1,
        sqlite=("CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL"),
        postgres=(),
    )
    async with aiosqlite.connect(tmp_path / "m.db", isolation_level=None) as conn:
        await migrate_sqlite(conn)
        with pytest.raises(sqlite3.OperationalError):
            await migrate_sqlite(conn, (*schema.MIGRATIONS, broken))
        async with conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'") as cur:
            assert await cur.fetchone() is None
        assert await migrate_sqlite(conn) == []


def test_migration_versions_must_increase() -> None:
    one = schema.MIGRATIONS[0]
    with pytest.raises(ValueError, match="increasing"):
        schema.pending(0, (one, one))
    assert schema.pending(0) == list(schema.MIGRATIONS)
    assert schema.pending(schema.LATEST) == []


def test_every_migration_has_both_dialects() -> None:
    for migration in schema.MIGRATIONS:
        assert len(migration.sqlite) == len(migration.postgres) > 0


def test_grouping_packs_kinds_and_keeps_per_run_order() -> None:
    writes: list[Write] = [
        create("a"),
        step("a", "1"),
        create("b"),
        UpdateRun("a", "x", 1, None, 1.0),
        step("b", "1"),
        RecordAttempt("a", 1, 1.0, 1.0, "response"),
        UpdateRun("b", "x", 1, None, 1.0),
        create("c"),
        FinishRun("a", "failed", StoredResponse(500, [], b""), 2.0),
        UpdateRun("a", "y", 2, None, 3.0),
        step("c", "1"),
    ]

    groups = group_writes(writes)

    assert [[type(w).__name__ for w in g] for g in groups] == [
        ["CreateRun", "CreateRun", "CreateRun"],
        ["PutStep", "PutStep", "PutStep"],
        ["UpdateRun", "UpdateRun"],
        ["RecordAttempt"],
        ["FinishRun"],
        ["UpdateRun"],
    ]
    assert sorted(map(id, writes)) == sorted(id(w) for g in groups for w in g)


def test_unfinished_matches_the_final_statuses() -> None:
    quoted = {f"'{status}'" for status in FINAL_STATUSES}
    assert schema.UNFINISHED.startswith("status NOT IN (")
    assert set(schema.UNFINISHED.removeprefix("status NOT IN (").rstrip(")").split(", ")) == quoted


def test_purge_takes_exactly_the_final_statuses() -> None:
    quoted = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
    assert f" AND status IN ({quoted}) " in sqlite_sql.PURGEABLE


def test_active_is_unfinished_and_not_parked() -> None:
    quoted = {f"'{status}'" for status in FINAL_STATUSES | PARKED_STATUSES}
    assert schema.ACTIVE.startswith("status NOT IN (")
    assert set(schema.ACTIVE.removeprefix("status NOT IN (").rstrip(")").split(", ")) == quoted
    assert not FINAL_STATUSES & PARKED_STATUSES


def test_the_predicates_are_the_partial_indexes_own_text() -> None:
    """Built from the status vocabulary, they must still read as the migrations wrote them."""
    ddl = [statement for m in schema.MIGRATIONS for statement in m.sqlite]
    assert any(f"WHERE {schema.ACTIVE}" in s for s in ddl)
    assert any(f"WHERE {schema.SUSPENDED}" in s for s in ddl)


async def test_sqlite_lease_queries_use_the_active_index(tmp_path: Path) -> None:
    """The partial index is only used when a query repeats its predicate exactly."""
    store = await open_store("sqlite:///" + str(tmp_path / "gw.db"))
    await store.close()
    queries = {
        sqlite_sql.CLAIM.format(which=sqlite_sql.EXPIRED): (5.0, 10),
        sqlite_sql.CLAIM.format(which=sqlite_sql.NOT_MINE): (5.0, "a", 10),
        sqlite_sql.RENEW: (1.0, "a"),
        sqlite_sql.RELEASE: ("a",),
    }
    with closing(sqlite3.connect(tmp_path / "gw.db")) as conn:
        for query, params in queries.items():
            plan = str(conn.execute("EXPLAIN QUERY PLAN " + query, params).fetchall())
            assert "runs_active_lease" in plan, (query, plan)


V1_RUN = (
    "INSERT INTO runs (run_id, route, status, attempt, created_at, updated_at, method, path_qs,"
    " req_headers, req_body) VALUES (?, 'chat', 'backoff', 2, 100.0, 110.0, 'POST', '/x',"
    " '[[\"A\",\"b\"]]', X'00ff')"
)


async def test_sqlite_a_v1_database_migrates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(schema.SQLITE_META)
        for statement in schema.MIGRATIONS[0].sqlite:
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('secret', 'old')")
        conn.execute(V1_RUN, ("old-run",))
        conn.execute("INSERT INTO steps VALUES ('old-run', 's1', X'7b7d', 1, 105.0)")

    store = await open_store("sqlite:///" + str(path))
    try:
        assert await store.get_meta("schema_version") == str(schema.LATEST)
        assert await store.get_meta("secret") == "old"
        old = await store.get_run("old-run")
        assert old is not None
        assert (old.status, old.attempt, old.owner, old.lease_until) == ("backoff", 2, None, None)
        assert old.request == StoredRequest("POST", "/x", [("A", "b")], b"\x00\xff")
        assert await store.load_steps("old-run") == {"s1": b"{}"}
        claimed = await store.claim_unfinished("me", 200.0, 30.0)
        assert [(r.run_id, r.owner, r.lease_until) for r in claimed] == [("old-run", "me", 230.0)]
        await store.apply(
            [CreateRun("new", "chat", REQUEST, 200.0, idempotency=IdempotencyKey("k", "f"))]
        )
        assert await store.find_idempotency("chat", "k") == KeyRow("f", "new")
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_sqlite_full_database_rolls_back_and_recovers(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "full.db")
    # Below the pages in use, SQLite caps the file at its current size: no growth at all.
    store = await SqliteStore.open(url, max_page_count=1)
    big = b'"' + b"x" * 200_000 + b'"'
    batch: list[Write] = [create("r1"), step("r1", "big", big)]
    try:
        with pytest.raises(StoreUnavailable, match="is full") as info:
            await store.apply(batch)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert await store.get_run("r1") is None
        # Still full: fails the same way, rather than "transaction within a transaction".
        with pytest.raises(StoreUnavailable, match="is full"):
            await store.apply(batch)

        assert await store.set_max_page_count(1_000_000) == 1_000_000
        await store.apply(batch)
        assert await store.load_steps("r1") == {"big": big}
    finally:
        await store.close()
    with closing(sqlite3.connect(tmp_path / "full.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_open_store_reads_the_test_max_pages_fault_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_MAX_PAGES_ENV, "1")
    store = await open_store("sqlite:///" + str(tmp_path / "capped.db"))
    try:
        with pytest.raises(StoreUnavailable, match="is full"):
            await store.apply([create("r1", body=b"x" * 100_000)])
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (sqlite3.OperationalError("database or disk is full"), "is full"),
        (sqlite3.OperationalError("disk I/O error"), "disk I/O error"),
        (sqlite3.OperationalError("database is locked"), "is locked by another connection"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "is read-only"),
        (sqlite3.ProgrammingError("Error binding parameter 1"), "Error binding parameter 1"),
    ],
)
def test_sqlite_errors_are_described_for_operators(error: sqlite3.Error, cause: str) -> None:
    message = describe_error(error, "/data/gw.db", "writing 3 writes")

    assert message.startswith("sqlite: writing 3 writes failed")
    assert "/data/gw.db" in message and cause in message


async def test_sqlite_a_value_over_the_length_limit_is_refused_for_good(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "short.db")
    store = await SqliteStore.open(url, max_length=1 << 20)
    big = b'"' + b"x" * (2 << 20) + b'"'
    try:
        with pytest.raises(StoreRejected, match="too big") as info:
            await store.apply([create("r1"), step("r1", "big", big)])
        assert isinstance(info.value.__cause__, sqlite3.DataError)
        assert "SQLITE_LIMIT_LENGTH" in str(info.value)
        assert await store.get_run("r1") is None  # the whole batch rolled back
        # Refused again however often it is tried; the rest, alone, commits.
        with pytest.raises(StoreRejected):
            await store.apply([step("r1", "big", big)])
        await store.apply([create("r1"), step("r1", "small")])
        assert await store.load_steps("r1") == {"small": b'{"ok":true}'}
    finally:
        await store.close()


async def test_open_store_reads_the_test_max_length_fault_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_MAX_LENGTH_ENV, str(1 << 20))
    store = await open_store("sqlite:///" + str(tmp_path / "short.db"))
    try:
        await store.apply([create("r1", body=b"x" * (512 << 10))])
        with pytest.raises(StoreRejected, match="too big"):
            await store.apply([create("r2", body=b"x" * (2 << 20))])
    finally:
        await store.close()


def _integrity_error() -> sqlite3.IntegrityError:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (k PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        try:
            conn.execute("INSERT INTO t VALUES (1)")
        except sqlite3.IntegrityError as exc:
            return exc
    raise AssertionError("no IntegrityError")


@pytest.mark.parametrize(
    ("error", "for_good"),
    [
        (sqlite3.DataError("string or blob too big"), True),
        (_integrity_error(), True),
        (sqlite3.InterfaceError("Error binding parameter 2"), True),
        (sqlite3.ProgrammingError("Error binding parameter 1: type 'dict' is not supported"), True),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), True),
        (TypeError("unsupported type"), True),
        (sqlite3.OperationalError("database or disk is full"), False),
        (sqlite3.OperationalError("database is locked"), False),
        (sqlite3.OperationalError("disk I/O error"), False),
        (sqlite3.OperationalError("attempt to write a readonly database"), False),
        (sqlite3.ProgrammingError("Cannot operate on a closed database."), False),
    ],
)
def test_sqlite_errors_that_no_retry_can_fix(error: Exception, for_good: bool) -> None:
    assert refused_for_good(error) is for_good
