"""Store fixtures: a `database` per dialect (seen from outside), and a fresh `store` on it.

To run the contract suite on another dialect, add its name to DATABASES and a Database
class that opens it and can inspect or sabotage it from a separate connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Protocol

import pytest

from gateway.store import FullStore
from gateway.store.open import open_store
from gateway.store.sqlite import SqliteStore

DATABASES = ["sqlite"]


class Database(Protocol):
    """One database the contract suite runs against, seen from outside the store."""

    name: str
    url: str

    async def open(self, *, lock_wait: float | None = None) -> FullStore:
        """A new store on this database; `lock_wait` (seconds) shortens waits on a lock."""

    def hold_write_lock(self) -> AbstractContextManager[None]:
        """Keep every other writer out while the block runs (from a separate connection)."""

    def fail_step_insert(self, step_id: str) -> None:
        """Make any later insert of this step id fail inside the database."""

    def count(self, table: str) -> int:
        """Rows in a table, read through a fresh connection."""

    def step_output(self, run_id: str, step_id: str) -> bytes | None:
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

    @contextmanager
    def hold_write_lock(self) -> Iterator[None]:
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")

    def fail_step_insert(self, step_id: str) -> None:
        quoted = step_id.replace("'", "''")
        with closing(self._connect()) as conn:
            conn.execute(
                f"CREATE TRIGGER fail_{step_id.encode().hex()} BEFORE INSERT ON steps"
                f" WHEN NEW.step_id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'sabotaged'); END"
            )

    def count(self, table: str) -> int:
        with closing(self._connect()) as conn:
            (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)

    def step_output(self, run_id: str, step_id: str) -> bytes | None:
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT output FROM steps WHERE run_id = ? AND step_id = ?", (run_id, step_id)
            ).fetchone()
        return None if row is None else bytes(row[0])


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        # A directory that does not exist yet: opening must create it.
        return SqliteDatabase(tmp_path / "data" / "durable.db")
    raise AssertionError(f"unknown database {request.param}")


@pytest.fixture
async def store(database: Database) -> AsyncIterator[FullStore]:
    opened = await database.open()
    try:
        yield opened
    finally:
        await opened.close()
