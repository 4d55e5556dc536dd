"""Store fixtures: a `database` per dialect (seen from outside), and a fresh `store` on it.

To run the contract suite on another dialect, add its name to DATABASES and a Database
class that opens it and can inspect or sabotage it from a separate connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing
from pathlib import Path
from typing import Any, Final, Protocol

import asyncpg
import pytest

from gateway.store import FullStore
from gateway.store.open import open_store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.postgres import PgServer

DATABASES = ["sqlite", "postgres"]


class Database(Protocol):
    """One database the contract suite runs against, seen from outside the store."""

    name: str
    url: str

    async def open(self, *, lock_wait: float | None = None) -> FullStore:
        """A new store on this database; `lock_wait` (seconds) shortens waits on a lock."""

    def hold_write_lock(self) -> AbstractAsyncContextManager[None]:
        """Keep every other writer out while the block runs (from a separate connection)."""

    async def fail_step_insert(self, step_id: str) -> None:
        """Make any later insert of this step id fail inside the database."""

    async def count(self, table: str) -> int:
        """Rows in a table, read through a fresh connection."""

    async def step_output(self, run_id: str, step_id: str) -> bytes | None:
        """One step's output, read through a fresh connection (None if not committed)."""


class SqliteDatabase:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        # An absolute path after the three slashes gives the four of sqlite:////abs.
        self.url = "sqlite:///" + str(path)

    async def open(self, *, lock_wait: float | None = None) -> FullStore:
        if lock_wait is None:
            return await open_store(self.url)
        return await SqliteStore.open(self.url, busy_timeout_ms=int(lock_wait * 1000))

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    @asynccontextmanager
    async def hold_write_lock(self) -> AsyncIterator[None]:
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")

    async def fail_step_insert(self, step_id: str) -> None:
        quoted = step_id.replace("'", "''")
        with closing(self._connect()) as conn:
            conn.execute(
                f"CREATE TRIGGER fail_{step_id.encode().hex()} BEFORE INSERT ON steps"
                f" WHEN NEW.step_id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'sabotaged'); END"
            )

    async def count(self, table: str) -> int:
        with closing(self._connect()) as conn:
            (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)

    async def step_output(self, run_id: str, step_id: str) -> bytes | None:
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT output FROM steps WHERE run_id = ? AND step_id = ?", (run_id, step_id)
            ).fetchone()
        return None if row is None else bytes(row[0])


TABLES: Final = (
    "runs",
    "steps",
    "attempts",
    "idempotency_keys",
    "pending",
    "events",
    "step_errors",
    "bodies",
    "body_chunks",
    "meta",
)


class PostgresDatabase:
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, *, lock_wait: float | None = None) -> FullStore:
        return await PostgresStore.open(self.url, pool=4, lock_wait=lock_wait)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    @asynccontextmanager
    async def hold_write_lock(self) -> AsyncIterator[None]:
        # EXCLUSIVE: reads (ACCESS SHARE) go on, every write (ROW EXCLUSIVE) waits.
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
                yield
        finally:
            await conn.close()

    async def fail_step_insert(self, step_id: str) -> None:
        name = f"fail_{step_id.encode().hex()}"
        conn = await asyncpg.connect(self.url)
        try:
            # A check violation: a value refused for good, as SQLite's RAISE(ABORT).
            await conn.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'sabotaged' USING ERRCODE = 'check_violation'; END $$"
            )
            quoted = step_id.replace("'", "''")
            await conn.execute(
                f"CREATE TRIGGER {name} BEFORE INSERT ON steps FOR EACH ROW"
                f" WHEN (NEW.step_id = '{quoted}') EXECUTE FUNCTION {name}()"
            )
        finally:
            await conn.close()

    async def count(self, table: str) -> int:
        return int(await self._fetchval(f"SELECT count(*) FROM {table}"))

    async def step_output(self, run_id: str, step_id: str) -> bytes | None:
        output = await self._fetchval(
            "SELECT output FROM steps WHERE run_id = $1 AND step_id = $2", run_id, step_id
        )
        return None if output is None else bytes(output)


@pytest.fixture(params=DATABASES)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        # A directory that does not exist yet: opening must create it.
        yield SqliteDatabase(tmp_path / "data" / "durable.db")
    elif request.param == "postgres":
        server: PgServer = request.getfixturevalue("pg_server")
        url = await server.create_database()
        try:
            yield PostgresDatabase(url)
        finally:
            await server.drop_database(url)
    else:
        raise AssertionError(f"unknown database {request.param}")


@pytest.fixture
async def store(database: Database) -> AsyncIterator[FullStore]:
    opened = await database.open()
    try:
        yield opened
    finally:
        await opened.close()
