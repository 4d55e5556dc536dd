"""Storage faults: a locked or full database. Plain routes keep serving; durable routes get a
clear 503 problem; the cause is logged once per burst; writes land once the cause is gone.
And writes the store refuses for good (too big): the run fails with a stored problem, the
rest goes on, and /readyz tells which is which.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import closing
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.engine.tokens import Tokens
from gateway.store.open import TEST_MAX_LENGTH_ENV, TEST_MAX_PAGES_ENV
from tests.conftest import Backend, Gateway, GatewayFactory, HeldBackend, durable_route
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
    gw = gateway_factory(routes(backend), env={TEST_MAX_PAGES_ENV: "40"})
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


# --- writes the store refuses for good, and readiness ---------------------------------

LIMIT = 1 << 20
"""The gateway's SQLITE_LIMIT_LENGTH below: a 2 MiB value is too big for its store."""
TOO_BIG = 2 << 20
SECRET = "test-secret-for-result-urls"
NOT_STORED = "https://durable-gateway.dev/problems/result-not-stored"


class BigBackend:
    """Answers bodies too big for the store, or records a step too big for it, and
    counts every call, so a test can tell whether a run ran again."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.step_answers: list[tuple[int, dict[str, Any]]] = []
        self.url = ""

    async def big(self, request: web.Request) -> web.Response:
        """TOO_BIG bytes, or `?kib=N` KiB (up to 64 KiB, a body the gateway reads whole)."""
        self.calls["big"] += 1
        size = int(request.query["kib"]) * 1024 if "kib" in request.query else TOO_BIG
        return web.Response(body=b"x" * size, content_type="application/octet-stream")

    async def small(self, request: web.Request) -> web.Response:
        self.calls["small"] += 1
        await request.read()
        return web.json_response({"ok": True})

    async def step(self, request: web.Request) -> web.Response:
        """Records one step too big for the store, with ?durable=sync, as a backend would."""
        self.calls["step"] += 1
        url = request.headers["Durable-Sidecar"] + "/steps/big?durable=sync"
        headers = {
            "Authorization": "Bearer " + request.headers["Durable-Token"],
            "Content-Type": "application/json",
        }
        body = io.BytesIO(json.dumps({"output": "y" * TOO_BIG}).encode())
        async with aiohttp.ClientSession() as session:
            async with session.put(url, data=body, headers=headers) as resp:
                self.step_answers.append((resp.status, await resp.json(content_type=None)))
        return web.json_response({"error": "the step was not recorded"}, status=500)


@pytest.fixture
async def big_backend() -> AsyncIterator[BigBackend]:
    backend = BigBackend()
    app = web.Application(client_max_size=2 * TOO_BIG)
    app.router.add_get("/demo/big", backend.big)
    app.router.add_route("*", "/demo/small", backend.small)
    app.router.add_post("/demo/step", backend.step)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    backend.url = str(server.make_url("")).rstrip("/")
    yield backend
    await server.close()


def short_gateway(
    gateway_factory: GatewayFactory, backend: BigBackend, limit: int = LIMIT
) -> Gateway:
    """A gateway whose store refuses any value over `limit` bytes."""
    return gateway_factory(
        durable_route(backend.url, retry="{max_attempts: 3, initial_backoff: 10ms}"),
        extra_yaml=f"security:\n  secret: {SECRET}\n",
        env={TEST_MAX_LENGTH_ENV: str(limit)},
    )


def result_url(gw: Gateway, run_id: str) -> str:
    token = Tokens.from_text(SECRET).result_token(run_id)
    return gw.url(f"/_durable/runs/{run_id}/result?token={token}")


def stored_rows(gw: Gateway, run_id: str) -> dict[str, int]:
    with closing(sqlite3.connect(gw.db_path)) as db:
        return {
            table: db.execute(
                f"SELECT count(*) FROM {table} WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for table in ("runs", "steps", "attempts")
        }


def unfinished_runs(gw: Gateway) -> int:
    with closing(sqlite3.connect(gw.db_path)) as db:
        query = "SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')"
        return int(db.execute(query).fetchone()[0])


async def assert_ready(http: aiohttp.ClientSession, gw: Gateway) -> None:
    async with http.get(gw.admin + "/readyz") as resp:
        assert resp.status == 200, await resp.text()


async def assert_durable_ok(http: aiohttp.ClientSession, gw: Gateway) -> None:
    async with http.post(gw.url("/demo/small"), data=b"{}") as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    ("path", "refused", "described"),
    [
        # Read whole (declared length, 48 KiB): the final response is the refused value.
        ("/demo/big?kib=48", "FinishRun", "final response (status 200, 49152 bytes)"),
        # Streamed (2 MiB): its first chunk is refused, and the client's body is cut.
        ("/demo/big", "AppendBody", "65536 bytes of the streamed response at byte 0"),
    ],
)
async def test_a_response_too_big_for_the_store_fails_its_run_with_a_stored_problem(
    big_backend: BigBackend,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    path: str,
    refused: str,
    described: str,
) -> None:
    gw = short_gateway(gateway_factory, big_backend, limit=32 * 1024)

    async with http.get(gw.url(path)) as resp:
        # Answered before the store was asked: the client gets what it gets.
        assert resp.status in (200, 500)
        run_id = resp.headers["Durable-Run-Id"]
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await resp.read()

    async def problem() -> None:
        async with http.get(result_url(gw, run_id), headers={"Prefer": "wait=5"}) as resp:
            assert resp.status == 500, resp.status
            assert resp.content_type == "application/problem+json"
            body = await resp.json()
        assert body["type"] == NOT_STORED and body["run_id"] == run_id
        assert described in body["detail"]
        assert "too big" in body["detail"]

    await problem()
    await assert_durable_ok(http, gw)  # the queue goes on: no 503
    await assert_ready(http, gw)
    async with http.get(f"{gw.admin}/v1/runs/{run_id}") as resp:
        detail = await resp.json()
    assert detail["status"] == "failed" and detail["response"]["status"] == 500
    logs = gw.logs()
    assert f"store refused a {refused} write for good" in logs
    assert "store writes failing" not in logs

    gw.restart()  # SIGTERM, then the same file again
    await problem()
    await assert_durable_ok(http, gw)

    async def all_finished() -> None:  # the small run's record follows its answer
        assert unfinished_runs(gw) == 0  # nothing for a restart to run again

    await assert_eventually(all_finished, within=10)
    assert big_backend.calls["big"] == 1


async def test_a_request_too_big_for_the_store_gets_a_problem_and_leaves_nothing(
    held: HeldBackend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(held.url), env={TEST_MAX_LENGTH_ENV: str(LIMIT)})

    async with http.post(gw.url("/demo/anything"), data=io.BytesIO(b"z" * TOO_BIG)) as resp:
        assert resp.status == 500, await resp.text()
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        run_id = resp.headers["Durable-Run-Id"]
    assert body["type"] == NOT_STORED and body["run_id"] == run_id
    assert f"the request ({TOO_BIG} bytes of body)" in body["detail"]
    # Its attempt had gone out already: let it end. Nothing of the run is stored after.
    await held.attempts.get()
    await held.answers.put(200)
    async with http.post(gw.url("/demo/next"), headers={"Prefer": "respond-async"}) as resp:
        assert resp.status == 202  # a result URL only once its run is committed
    await held.attempts.get()
    await held.answers.put(200)
    gw.proc.stop()  # SIGTERM: waits for attempts in flight, flushes the writer
    assert stored_rows(gw, run_id) == {"runs": 0, "steps": 0, "attempts": 0}
    assert "store refused a CreateRun write for good" in gw.logs()


async def test_a_sync_step_too_big_for_the_store_gets_500_and_fails_the_run(
    big_backend: BigBackend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = short_gateway(gateway_factory, big_backend)

    async with http.post(gw.url("/demo/step")) as resp:
        assert resp.status == 500
        body = await resp.json()
        run_id = resp.headers["Durable-Run-Id"]
    assert body["type"] == NOT_STORED
    assert "the output of step 'big'" in body["detail"] and "too big" in body["detail"]

    async def answered() -> None:
        assert big_backend.step_answers

    await assert_eventually(answered)
    ((status, step_problem),) = big_backend.step_answers
    assert status == 500 and step_problem["type"] == NOT_STORED
    assert "too big" in step_problem["detail"]
    await assert_durable_ok(http, gw)
    await assert_ready(http, gw)

    gw.proc.stop()  # the attempt ends (its 500 is not retried), the writer flushes
    assert big_backend.calls["step"] == 1
    with closing(sqlite3.connect(gw.db_path)) as db:
        status_, resp_status, attempt = db.execute(
            "SELECT status, resp_status, attempt FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    assert (status_, resp_status, attempt) == ("failed", 500, 1)
    assert stored_rows(gw, run_id)["steps"] == 0


async def test_readyz_says_503_while_writes_fail_and_200_once_they_recover(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(routes(backend), env={TEST_MAX_PAGES_ENV: "60"})
    await assert_ready(http, gw)
    # Another connection grows the file past the gateway's cap: its next new page fails.
    filler = sqlite3.connect(gw.db_path, isolation_level=None, timeout=10)
    try:
        filler.execute("CREATE TABLE filler (x BLOB)")
        filler.execute("INSERT INTO filler VALUES (zeroblob(1000000))")
        async with http.post(gw.url("/demo/echo"), data=b"x" * 20_000) as resp:
            assert resp.status == 200  # the happy path waits on nothing

        async def not_ready() -> None:
            async with http.get(gw.admin + "/readyz") as resp:
                assert resp.status == 503, resp.status
                assert resp.content_type == "application/problem+json"
                assert resp.headers["Retry-After"] == "1"
                problem = await resp.json()
            assert "durable writes are failing" in problem["detail"]
            assert "full" in problem["detail"]

        await assert_eventually(not_ready, within=30)
        async with http.get(gw.admin + "/healthz") as resp:
            assert resp.status == 200  # alive all the same
        filler.execute("DROP TABLE filler")  # its pages are free again: writes land
    finally:
        filler.close()

    await assert_eventually(lambda: assert_ready(http, gw), within=30)
    async with http.post(gw.url("/demo/echo"), headers={"Prefer": "respond-async"}) as resp:
        assert resp.status == 202  # durable runs are admitted and committed again
    assert "store writes recovered" in gw.logs()
