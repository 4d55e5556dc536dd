"""PostgreSQL specifics: migrations under an advisory lock, claims that skip locked rows,
error mapping, and a pool that recovers when the server comes back.

The contract itself runs on PostgreSQL through the `store` fixture of every other module.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from gateway.errors import StoreRejected, StoreUnavailable
from gateway.store import CreateRun, PutStep, StoredRequest, SuspendRun, UpdateRun, Write, schema
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.migrate import migrate_postgres
from gateway.store.postgres.server import Server, classify, describe_error
from gateway.store.postgres.sql import ARRAYS, plan
from tests.helpers import free_port
from tests.postgres import PgServer
from tests.store.records import create, ids

REQUEST = StoredRequest("POST", "/a", [], b"{}")
SERVER = Server("dg", "db.internal", 5432, "durable")


@pytest.fixture
async def dsn(pg_server: PgServer) -> str:
    return await pg_server.create_database()


async def test_nodes_opening_an_empty_database_together_migrate_it_once(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.store.postgres")

    stores = await asyncio.gather(*(PostgresStore.open(dsn, pool=2) for _ in range(4)))

    try:
        applied = [r for r in caplog.records if "applied schema migrations" in r.getMessage()]
        assert len(applied) == 1
        for store in stores:
            assert await store.get_meta("schema_version") == str(schema.LATEST)
        await stores[0].apply([create("r1")])
        assert ids([row for row in [await stores[3].get_run("r1")] if row]) == ["r1"]
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_migrations_apply_once_in_order_and_refuse_a_newer_database(dsn: str) -> None:
    extra = schema.Migration(
        version=schema.LATEST + 1, sqlite=(), postgres=("CREATE TABLE extra (x INTEGER)",)
    )
    broken = schema.Migration(
        version=schema.LATEST + 2,
        sqlite=(),
        postgres=("CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL"),
    )
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrate_postgres(conn) == [m.version for m in schema.MIGRATIONS]
        assert await migrate_postgres(conn) == []
        assert await migrate_postgres(conn, (*schema.MIGRATIONS, extra)) == [extra.version]
        # A failing step leaves nothing behind: one transaction.
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await migrate_postgres(conn, (*schema.MIGRATIONS, extra, broken))
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        # Old code meeting the newer database refuses it, and changes nothing.
        with pytest.raises(StoreUnavailable, match="newer"):
            await migrate_postgres(conn)
        version = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version == str(extra.version)
    finally:
        await conn.close()


async def test_claims_skip_runs_locked_by_another_session_without_waiting(dsn: str) -> None:
    store = await PostgresStore.open(dsn, pool=2, lock_wait=30.0)
    other = await asyncpg.connect(dsn)
    try:
        await store.apply(
            [create(f"r{i}", at=float(i)) for i in range(4)]
            + [CreateRun(f"s{i}", "chat", REQUEST, 1.0) for i in range(2)]
            + [SuspendRun(f"s{i}", 1, 5.0, 2.0) for i in range(2)]
        )
        async with other.transaction():
            await other.execute("SELECT 1 FROM runs WHERE run_id IN ('r1', 's0') FOR UPDATE")
            # Another node is claiming r1 and s0: these claims take the rest at once,
            # although a lock wait would last 30 s.
            async with asyncio.timeout(10):
                claimed = await store.claim_unfinished("me", 10.0, 30.0)
                due = await store.claim_due("me", 10.0, 30.0)
        assert ids(claimed) == ["r0", "r2", "r3"]
        assert ids(due) == ["s1"]
        assert ids(await store.claim_unfinished("you", 10.0, 30.0)) == ["r1"]
    finally:
        await other.close()
        await store.close()


async def test_two_nodes_claiming_at_once_never_share_a_run(dsn: str) -> None:
    nodes = [await PostgresStore.open(dsn, pool=3) for _ in range(2)]
    try:
        await nodes[0].apply([create(f"r{i}") for i in range(300)])

        async def node(store: PostgresStore, name: str) -> list[str]:
            taken: list[str] = []
            while batch := await store.claim_unfinished(name, 10.0, 30.0, limit=7):
                taken += ids(batch)
            return taken

        first, second = await asyncio.gather(
            *(node(store, f"n{i}") for i, store in enumerate(nodes))
        )
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(f"r{i}" for i in range(300))
    finally:
        for store in nodes:
            await store.close()


async def test_a_store_recovers_by_itself_once_the_server_is_back(
    pg_server: PgServer, dsn: str
) -> None:
    store = await PostgresStore.open(dsn, pool=3)
    try:
        await store.apply([create("before")])
        pg_server.stop()
        try:
            with pytest.raises(StoreUnavailable, match=r"postgresql: .*writing 1 write"):
                await store.apply([create("while-down")])
            with pytest.raises(StoreUnavailable):
                await store.get_run("before")
        finally:
            pg_server.start()
        await store.apply([create("after"), PutStep("after", "s", b"1", 1, 1.0)])
        assert await store.load_steps("after") == {"s": b"1"}
        assert await store.get_run("while-down") is None
    finally:
        await store.close()


async def test_unreachable_server_and_missing_database_are_explained(
    pg_server: PgServer,
) -> None:
    closed = f"postgresql://dg:s3cret-pw@127.0.0.1:{free_port()}/durable"
    with pytest.raises(StoreUnavailable) as refused:
        await PostgresStore.open(closed)
    missing = pg_server.dsn_of("no_such_db").replace("postgres@", "postgres:s3cret-pw@")
    with pytest.raises(StoreUnavailable) as absent:
        await PostgresStore.open(missing)

    assert str(refused.value).startswith("postgresql: connection refused (opening, 127.0.0.1:")
    assert "does not exist" in str(absent.value) and "/no_such_db" in str(absent.value)
    for message in (str(refused.value), str(absent.value)):
        assert "s3cret-pw" not in message


async def test_a_value_postgresql_refuses_is_refused_for_good(store_dsn: str) -> None:
    store = await PostgresStore.open(store_dsn, pool=1)
    try:
        await store.apply([create("r1")])
        # A NUL character has no place in PostgreSQL text: a data exception.
        with pytest.raises(StoreRejected, match=r"postgresql: .*\(writing 2 writes, ") as info:
            await store.apply([create("r2"), PutStep("r1", "bad\x00id", b"1", 1, 1.0)])
        assert isinstance(info.value.__cause__, asyncpg.PostgresError)
        assert await store.get_run("r2") is None
        await store.apply([create("r2")])
    finally:
        await store.close()


@pytest.fixture
async def store_dsn(pg_server: PgServer) -> str:
    return await pg_server.create_database()


def _error(kind: type[Exception], message: str = "boom") -> Exception:
    return kind(message)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # Faults: the writer retries them.
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"), StoreUnavailable),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed"), StoreUnavailable),
        (TimeoutError(), StoreUnavailable),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), StoreUnavailable),
        (asyncpg.InterfaceError("connection is closed"), StoreUnavailable),
        (_error(asyncpg.exceptions.AdminShutdownError), StoreUnavailable),
        (_error(asyncpg.exceptions.CannotConnectNowError), StoreUnavailable),
        (_error(asyncpg.exceptions.TooManyConnectionsError), StoreUnavailable),
        (_error(asyncpg.exceptions.LockNotAvailableError), StoreUnavailable),
        (_error(asyncpg.exceptions.QueryCanceledError), StoreUnavailable),
        (_error(asyncpg.exceptions.DeadlockDetectedError), StoreUnavailable),
        (_error(asyncpg.exceptions.SerializationError), StoreUnavailable),
        (_error(asyncpg.exceptions.InvalidPasswordError), StoreUnavailable),
        (_error(asyncpg.exceptions.InvalidCatalogNameError), StoreUnavailable),
        (_error(asyncpg.exceptions.ReadOnlySQLTransactionError), StoreUnavailable),
        (_error(asyncpg.exceptions.DiskFullError), StoreUnavailable),
        # Refused for good: the same write fails the same way however often it is tried.
        (_error(asyncpg.exceptions.StringDataRightTruncationError), StoreRejected),
        (_error(asyncpg.exceptions.NumericValueOutOfRangeError), StoreRejected),
        (_error(asyncpg.exceptions.CharacterNotInRepertoireError), StoreRejected),
        (_error(asyncpg.exceptions.UniqueViolationError), StoreRejected),
        (_error(asyncpg.exceptions.CheckViolationError), StoreRejected),
        (_error(asyncpg.exceptions.ProgramLimitExceededError), StoreRejected),
        (asyncpg.exceptions._base.DataError("invalid input for query argument $3"), StoreRejected),
        # Not a database error at all: raised as it is.
        (ValueError("a bug"), None),
        (KeyError("a bug"), None),
    ],
)
def test_errors_are_classified_by_what_a_retry_would_do(
    error: Exception, kind: type[Exception] | None
) -> None:
    assert classify(error) is kind


def test_a_wrong_password_reads_as_such_and_never_echoes_it() -> None:
    error = asyncpg.exceptions.InvalidPasswordError('password authentication failed for user "dg"')

    message = describe_error(error, SERVER, "opening")

    assert message.startswith('postgresql: authentication failed for user "dg" (opening,')
    assert "db.internal:5432/durable" in message and "password" in message


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (_error(asyncpg.exceptions.TooManyConnectionsError), "lower storage.pool"),
        (_error(asyncpg.exceptions.AdminShutdownError), "shutting down"),
        (_error(asyncpg.exceptions.LockNotAvailableError), "locked by another session"),
        (_error(asyncpg.exceptions.InvalidCatalogNameError), "database does not exist"),
        (ConnectionRefusedError(111, "refused"), "connection refused"),
    ],
)
def test_errors_are_described_for_operators(error: Exception, says: str) -> None:
    message = describe_error(error, SERVER, "writing 3 writes")

    assert message.startswith("postgresql: ")
    assert "(writing 3 writes, db.internal:5432/durable)" in message and says in message


@pytest.mark.parametrize(
    "dsn", ["sqlite:///x.db", "mysql://h/db", "postgresql://h:port/db", "http://h/db"]
)
def test_only_postgresql_urls_open(dsn: str) -> None:
    with pytest.raises(ValueError, match="postgresql"):
        Server.of(dsn)


def test_server_of_a_url_names_no_password() -> None:
    server = Server.of("postgres://dg:p%40ss@db.internal/durable")

    assert (server.user, str(server)) == ("dg", "db.internal:5432/durable")


def test_array_statements_touch_a_run_once_each_in_order() -> None:
    """An UPDATE from arrays may change a row only once: a run's second write of a group
    goes to a second statement, after the first."""
    writes: list[Write] = [
        UpdateRun("a", "backoff", 1, 5.0, 1.0),
        UpdateRun("b", "backoff", 1, 5.0, 1.0),
        UpdateRun("a", "running", 2, None, 2.0),
    ]

    steps = plan(writes)

    assert UpdateRun in ARRAYS
    assert [rows[0][-1] for _, rows in steps] == [["a", "b"], ["a"]]
    assert [rows[0][1] for _, rows in steps] == [[1, 1], [2]]
