"""What a `storage.url` names, parsed once for the config loader and the stores alike.

Pure parsing (`parse_storage_url`) plus one read-only look at the file system
(`check_sqlite_path`); never creates, opens or echoes a URL (it may hold a password).
The dialects this build can open are decided here only: PostgreSQL adds its branch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MEMORY: Final = ":memory:"
"""SQLite's in-memory database: a store for tests, never durable."""
_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_SQLITE_FORMS: Final = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """An SQLite store: the database file's path (relative to the working directory)."""

    path: str

    @property
    def in_memory(self) -> bool:
        return self.path == MEMORY


StorageUrl = SqliteUrl
"""Every store this build can open; PostgreSQL will join it as a union."""


def parse_storage_url(url: str) -> StorageUrl:
    """The store a `storage.url` names; ValueError (without the URL) for one this build
    cannot open. `sqlite:///:memory:` parses: whether it is allowed is the caller's call.
    """
    scheme, colon, rest = url.partition(":")
    scheme = scheme.strip().lower()
    if not colon or not _SCHEME.fullmatch(scheme):  # `pw@host:5432` must not be echoed
        raise ValueError(f"is not a URL: {_SQLITE_FORMS}")
    if scheme in ("postgresql", "postgres"):
        raise ValueError(
            f"{scheme}:// is not supported by this build yet; use sqlite:///path/to/file.db"
        )
    if scheme != "sqlite":
        raise ValueError(f"unknown scheme {scheme!r}: {_SQLITE_FORMS}")
    return SqliteUrl(_sqlite_path(rest))


def _sqlite_path(rest: str) -> str:
    """The path in what follows `sqlite:`; refuses what SQLite would read otherwise."""
    if not rest.startswith("///"):
        raise ValueError(f"an sqlite URL has three slashes and no host: {_SQLITE_FORMS}")
    path = rest[3:]
    if not path:
        raise ValueError(f"the sqlite URL names no file: {_SQLITE_FORMS}")
    if "?" in path or "#" in path:
        # SQLite would not read them as options: they would end up in the file's name.
        raise ValueError("an sqlite URL takes no query string or fragment (?… or #…)")
    if "\0" in path or any(ord(c) < 32 for c in path):
        raise ValueError("the sqlite path contains a control character")
    if path.rsplit("/", 1)[-1] in ("", ".", ".."):
        raise ValueError("the sqlite URL names a directory, not a database file")
    return path


def check_sqlite_path(path: str) -> None:
    """Refuse a database path this process could not open: an existing directory, or a
    parent that is not a directory and cannot be created. Creates nothing."""
    if path == MEMORY:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{path} is a directory: name a database file inside it")
    parent = target.parent
    while not parent.exists():  # the nearest existing ancestor must be a directory
        if parent.parent == parent or parent.is_symlink():
            raise ValueError(f"the directory of {path} cannot be created: {parent} is dangling")
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"the directory of {path} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) and parent != target.parent:
        raise ValueError(f"the directory of {path} cannot be created: {parent} is not writable")
