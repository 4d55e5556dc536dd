"""Storage faults: a locked or full database. Plain routes keep serving; durable routes get a
clear 503 problem; the cause is logged once per burst; writes land once the cause is gone.
"""

from __future__ import annotations

import sqlite3
import threading

import aiohttp

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import assert_eventually


def routes(backend: Backend) -> str:
    """A durable route and a plain one in front of the same backend."""
    plain = durable_route(backend.url, name="plain", path="/demo/stream", durable="false")
    return durable_route(backend.url) + plain


async def test_locked_database(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(routes(backend))
    locker = sqlite3.connect(gw.db_path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        async with http.get(gw.url("/demo/echo")) as resp:  # happy path: nothing waits
            assert resp.status == 200

        async def refused() -> None:
            async with http.get(gw.url("/demo/echo")) as resp:
                assert resp.status == 503, resp.status
                assert resp.content_type == "application/problem+json"
                problem = await resp.json()
            assert "locked" in problem["detail"]

        await assert_eventually(refused, within=30)
        async with http.get(gw.url("/demo/stream?chunks=1")) as resp:
            assert resp.status == 200
    finally:
        threading.Thread(target=locker.rollback).start()

    async def serving() -> None:
        async with http.get(gw.url("/demo/echo")) as resp:
            assert resp.status == 200

    await assert_eventually(serving, within=30)
    assert gw.logs().count("store writes failing") == 1
    assert "store writes recovered" in gw.logs()
    check = sqlite3.connect(gw.db_path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    locker.close()


async def test_full_database(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(routes(backend), env={"DURABLE_TEST_SQLITE_MAX_PAGES": "40"})
    statuses: list[int] = []

    async def refused() -> None:
        async with http.post(gw.url("/demo/echo"), data=b"x" * 4000) as resp:
            statuses.append(resp.status)
            assert resp.status == 503
            problem = await resp.json()
        assert "full" in problem["detail"]

    await assert_eventually(refused, within=30)
    assert set(statuses) <= {200, 503}
    async with http.get(gw.url("/demo/stream?chunks=1")) as resp:
        assert resp.status == 200
    assert gw.logs().count("store writes failing") == 1
    check = sqlite3.connect(gw.db_path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
