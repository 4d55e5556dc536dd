"""Opening a store from its `storage.url`: the one place that knows the dialects.

Imported by the composition root (`gateway.app`) and tools only.
"""

from __future__ import annotations

import os

from gateway.config.storage_url import SqliteUrl, parse_storage_url
from gateway.store.protocols import FullStore

TEST_MAX_PAGES_ENV = "DURABLE_TEST_SQLITE_MAX_PAGES"
"""Test-only fault point: caps an SQLite store's size in pages so writes fail as on a
full disk (SQLITE_FULL). Never set it in production."""
TEST_MAX_LENGTH_ENV = "DURABLE_TEST_SQLITE_MAX_LENGTH"
"""Test-only fault point: lowers the largest value (or row) an SQLite store takes, in
bytes, so a bigger write is refused for good (SQLITE_TOOBIG). Never set it in production."""


async def open_store(url: str, *, pool: int = 10) -> FullStore:
    """Open (and migrate) the store a `storage.url` names.

    Dispatches on the parse the config loader made too (`parse_storage_url`), so a URL
    `check` accepts never fails here for its form; ValueError for one it refuses.
    """
    parsed = parse_storage_url(url)
    if isinstance(parsed, SqliteUrl):
        from gateway.store.sqlite import SqliteStore

        max_pages = os.environ.get(TEST_MAX_PAGES_ENV, "").strip()
        max_length = os.environ.get(TEST_MAX_LENGTH_ENV, "").strip()
        return await SqliteStore.open(
            url,
            max_page_count=int(max_pages) if max_pages else None,
            max_length=int(max_length) if max_length else None,
        )
    raise ValueError("this build opens only sqlite:/// stores")
