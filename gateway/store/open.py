"""Opening a store from its `storage.url`: the one place that knows the dialects.

Imported by the composition root (`gateway.app`) and tools only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from gateway.config.storage_url import PostgresUrl, SqliteUrl, parse_storage_url
from gateway.errors import StoreMisconfigured, StoreUnavailable
from gateway.store.protocols import FullStore

log = logging.getLogger("gateway.store")

TEST_MAX_PAGES_ENV = "DURABLE_TEST_SQLITE_MAX_PAGES"
"""Test-only fault point: caps an SQLite store's size in pages so writes fail as on a
full disk (SQLITE_FULL). Never set it in production."""
TEST_MAX_LENGTH_ENV = "DURABLE_TEST_SQLITE_MAX_LENGTH"
"""Test-only fault point: lowers the largest value (or row) an SQLite store takes, in
bytes, so a bigger write is refused for good (SQLITE_TOOBIG). Never set it in production."""
START_WAIT_ENV = "DURABLE_START_WAIT"
"""Seconds a starting gateway waits for an unreachable database server (default 30)."""
START_WAIT = 30.0


async def open_store(url: str, *, pool: int = 10, wait: float | None = None) -> FullStore:
    """Open (and migrate) the store a `storage.url` names.

    Dispatches on the parse the config loader made too (`parse_storage_url`), so a URL
    `check` accepts never fails here for its form; ValueError for one it refuses. A
    database server that cannot be reached is tried again for `wait` seconds (a
    database starting beside the gateway, as in a compose file), saying why each time;
    then StoreUnavailable. A misconfiguration (a wrong password) raises at once.
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
    if wait is None:
        wait = float(os.environ.get(START_WAIT_ENV, "") or START_WAIT)
    return await _open_postgres(parsed, pool, wait)


async def _open_postgres(url: PostgresUrl, pool: int, wait: float) -> FullStore:
    from gateway.store.postgres import PostgresStore

    deadline = time.monotonic() + wait
    delay = 0.25
    while True:
        try:
            return await PostgresStore.open(url.url, pool=pool)
        except StoreMisconfigured:
            raise
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable(f"{exc} (gave up after {wait:g}s)") from None
            log.warning("waiting for the database (%.0fs left): %s", left, exc)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)
