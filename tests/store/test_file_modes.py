"""A SQLite store's files are its user's alone: created 0600 whatever the umask (the
database, and the -wal and -shm files SQLite makes after it), and tightened with a
warning when an older version left them open to others. Never loosened."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from gateway.store.open import open_store


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022: files open() creates are readable by everyone unless we say so."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def modes(db: Path) -> dict[str, int]:
    """Mode of each store file that exists: the database, -wal, -shm, and the lock."""
    found = {}
    for suffix in ("", "-wal", "-shm", ".lock"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            found[suffix] = stat.S_IMODE(path.stat().st_mode)
    return found


def older_store(db: Path) -> Path:
    """A store file as an older version left it, with an empty WAL beside it (as a crash
    can leave one), open to its group; answers the WAL's path."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    wal = Path(f"{db}-wal")
    wal.write_bytes(b"")
    os.chmod(db, 0o664)
    os.chmod(wal, 0o640)
    return wal


async def test_a_new_store_is_created_private(tmp_path: Path, loose_umask: None) -> None:
    db = tmp_path / "new" / "durable.db"
    store = await open_store(f"sqlite:///{db}")
    try:
        assert await store.set_meta_if_absent("secret", "s3cret") == "s3cret"
        assert modes(db) == {"": 0o600, "-wal": 0o600, "-shm": 0o600, ".lock": 0o600}
    finally:
        await store.close()


async def test_existing_open_files_are_tightened_with_a_warning(
    tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "durable.db"
    wal = older_store(db)
    with caplog.at_level(logging.WARNING, logger="gateway.store.sqlite"):
        store = await open_store(f"sqlite:///{db}")
    try:
        assert modes(db) == {"": 0o600, "-wal": 0o600, "-shm": 0o600, ".lock": 0o600}
    finally:
        await store.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"sqlite {db} was open to group or others (mode 0664): now 0600, as it holds secrets",
        f"sqlite {wal} was open to group or others (mode 0640): now 0600, as it holds secrets",
    ]


async def test_a_private_store_opens_without_a_warning(
    tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "durable.db"
    with closing(sqlite3.connect(db)):
        pass
    os.chmod(db, 0o600)
    with caplog.at_level(logging.WARNING, logger="gateway.store.sqlite"):
        store = await open_store(f"sqlite:///{db}")
    await store.close()
    assert modes(db)[""] == 0o600
    assert caplog.records == []
