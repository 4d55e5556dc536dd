"""What a `storage.url` names, parsed once for the config loader and the stores alike.

Pure parsing (`parse_storage_url`, which also asks whether the PostgreSQL driver is
installed) plus one read-only look at the file system (`check_sqlite_path`); never
creates, opens or echoes a URL (it may hold a password). The dialects this build can
open are decided here only.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

MEMORY: Final = ":memory:"
"""SQLite's in-memory database: a store for tests, never durable."""
_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_SQLITE_FORMS: Final = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
_FORMS: Final = f"{_SQLITE_FORMS}, or postgresql://user:password@host:5432/database"
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
POSTGRES_DRIVER: Final = "asyncpg"
"""The package a PostgreSQL store needs: an optional extra (`durable-gateway[postgres]`)."""


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """An SQLite store: the database file's path (relative to the working directory)."""

    path: str

    @property
    def in_memory(self) -> bool:
        return self.path == MEMORY


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    """A PostgreSQL database shared by every node; `url` is passed to asyncpg as given.

    `shown` is the same place without the password, for logs and errors.
    """

    url: str = field(repr=False)
    shown: str

    @property
    def in_memory(self) -> bool:
        return False


StorageUrl = SqliteUrl | PostgresUrl
"""Every store this build can open."""


def parse_storage_url(url: str) -> StorageUrl:
    """The store a `storage.url` names; ValueError (without the URL) for one this build
    cannot open. `sqlite:///:memory:` parses: whether it is allowed is the caller's call.
    """
    scheme, colon, rest = url.partition(":")
    scheme = scheme.strip().lower()
    if not colon or not _SCHEME.fullmatch(scheme):  # `pw@host:5432` must not be echoed
        raise ValueError(f"is not a URL: {_FORMS}")
    if scheme in _POSTGRES_SCHEMES:
        return _postgres(url.strip(), scheme)
    if scheme != "sqlite":
        raise ValueError(f"unknown scheme {scheme!r}: {_FORMS}")
    return SqliteUrl(_sqlite_path(rest))


def _postgres(url: str, scheme: str) -> PostgresUrl:
    """Checks the parts asyncpg would misread or we could not show safely; the rest
    (options in the query string, several hosts) is asyncpg's to judge."""
    if not url[len(scheme) + 1 :].startswith("//"):
        raise ValueError(f"a {scheme} URL starts with {scheme}://: {_FORMS}")
    if any(ord(c) < 32 for c in url):
        raise ValueError(f"the {scheme} URL contains a control character")
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError(f"a {scheme} URL takes no fragment (#…)")
    netloc = parts.netloc.rpartition("@")[2]  # what follows the credentials, if any
    if not netloc and "host=" not in parts.query:  # ?host=/run/postgresql: a unix socket
        raise ValueError(f"the {scheme} URL names no host: {_FORMS}")
    if "," not in netloc:  # a single host: its port must be a number (asyncpg's own check
        try:  # would echo the URL)
            parts.port  # noqa: B018
        except ValueError:
            raise ValueError(f"the {scheme} URL's port is not a number from 1 to 65535") from None
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(f"the {scheme} URL names no database: add /database after the host")
    if importlib.util.find_spec(POSTGRES_DRIVER) is None:  # looked up, not imported: cheap
        raise ValueError(
            f"a {scheme} store needs the {POSTGRES_DRIVER} package, which is not installed:"
            " pip install 'durable-gateway[postgres]'"
        )
    user = unquote(parts.username) + "@" if parts.username else ""
    return PostgresUrl(url, f"{scheme}://{user}{netloc}/{database}")


def shown_url(url: str) -> str:
    """A parsed `storage.url` as logs may show it: without a password."""
    parsed = parse_storage_url(url)
    return parsed.shown if isinstance(parsed, PostgresUrl) else url


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
