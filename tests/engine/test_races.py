"""The engine's race windows, in process: a real driver, runner, scheduler, writer and
SQLite file, and a backend on a real socket whose handler the test drives step by step.

Each test holds the engine at one window (an attempt in flight, a suspension committing,
a wait being stored) and makes the racing thing happen there, then checks the run ends
the one right way; a held client that never reads must not hold its attempt back
(end to end, with real sockets on both sides: tests/integration/test_slow_clients.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp import web

from gateway.config import RouteConfig, RouteMatch
from gateway.engine.credentials import Credentials
from gateway.engine.driver import LEASE_TTL, Driver
from gateway.engine.limits import Limits
from gateway.engine.live import LiveRun
from gateway.engine.runner import Runner
from gateway.engine.scheduler import Scheduler
from gateway.engine.stream import FOLLOW_LIMIT, TAIL_KEEP, Detached
from gateway.engine.tokens import Tokens
from gateway.errors import NotFound, StaleAttempt
from gateway.store import (
    BODY_TOO_LARGE,
    PutPending,
    RunStatus,
    Store,
    StoredRequest,
    SuspendRun,
    Write,
)
from gateway.store.sqlite import SqliteStore
from gateway.store.writer import Writer
from gateway.tasks import spawn
from gateway.upstream import Pool
from step_protocol import wire
from tests.helpers import assert_eventually, free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gate:
    """Holds the writer's batches that hold a chosen write, until opened; what happens in
    `after_commit` runs once such a batch committed, before anyone is told it did."""

    def __init__(self, store: SqliteStore, kind: type[Any]) -> None:
        self.store = store
        self.kind = kind
        self.reached = asyncio.Event()
        self.open = asyncio.Event()
        self.after_commit: Callable[[], Awaitable[None]] | None = None

    async def apply(self, writes: Sequence[Write]) -> None:
        if not any(isinstance(w, self.kind) for w in writes):
            await self.store.apply(writes)
            return
        self.reached.set()
        await self.open.wait()
        await self.store.apply(writes)
        if self.after_commit is not None:
            await self.after_commit()


@dataclass
class Engine:
    driver: Driver
    store: SqliteStore
    writer: Writer
    route: RouteConfig
    handler: Handler | None = None
    attempts: list[int] = field(default_factory=list)

    def admit(self) -> str:
        return self.driver.admit(self.route, StoredRequest("POST", "/work", [], b"")).run.run_id


@contextlib.asynccontextmanager
async def running(tmp_path: Path, gate: type[Any] | None) -> AsyncIterator[tuple[Engine, Gate]]:
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'engine.db'}")
    gated = Gate(store, gate or type(None))
    if gate is None:
        gated.open.set()
    writer = Writer(cast(Store, gated))
    writer.start()
    port = free_port()
    route = RouteConfig("work", RouteMatch("/*"), f"http://127.0.0.1:{port}")
    runner = Runner(
        store=store,
        writer=writer,
        pool=Pool(),
        tokens=Tokens(b"secret"),
        sidecar_url="http://127.0.0.1:1",
        limits=Limits([route]),
    )
    driver = Driver(
        runner=runner,
        credentials=Credentials([b"secret"]),
        sync_steps=False,
        routes=[route],
    )
    engine = Engine(driver, store, writer, route)

    async def backend(request: web.Request) -> web.StreamResponse:
        engine.attempts.append(int(request.headers[wire.ATTEMPT]))
        assert engine.handler is not None
        return await engine.handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend)
    site = web.AppRunner(app)
    await site.setup()
    await web.TCPSite(site, "127.0.0.1", port).start()
    timers = spawn(Scheduler(store, driver).run_forever(), name="scheduler")
    try:
        yield engine, gated
    finally:
        gated.open.set()
        timers.cancel()
        await driver.close(0.5)
        await site.cleanup()
        await writer.close(timeout=5)
        await runner.pool.close()
        await store.close()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with running(tmp_path, None) as (made, _):
        yield made


async def test_cancel_during_an_attempt_discards_its_response_and_fences_its_writes(
    engine: Engine,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="too late")

    engine.handler = slow
    run_id = engine.admit()
    await entered.wait()
    await engine.driver.cancel(run_id)
    release.set()

    with pytest.raises((NotFound, StaleAttempt)):  # the attempt's own writes are refused
        await engine.driver.put_step(run_id, 1, "s", b"1", False)
    await engine.writer.flush()
    row = await engine.store.get_run(run_id)
    assert row is not None and row.status == RunStatus.CANCELLED
    assert row.response is not None and row.response.status == 409
    assert engine.driver.get(run_id) is None
    assert engine.attempts == [1]  # and no retry was scheduled


async def test_a_wake_inside_the_suspension_commit_drives_the_run_once(tmp_path: Path) -> None:
    """The scheduler takes a due run in the moment between its suspension's commit and
    its task seeing that commit: the run goes on once, with one next attempt."""
    async with running(tmp_path, SuspendRun) as (engine, gate):

        async def nap_then_answer(request: web.Request) -> web.Response:
            run_id, attempt = request.headers[wire.RUN_ID], int(request.headers[wire.ATTEMPT])
            answer = engine.driver.sleep(run_id, attempt, "nap", time.time() + 0.05, time.time())
            if not answer.done:
                return web.Response(status=202)
            return web.json_response({"attempt": attempt})

        async def scheduler_takes_it() -> None:
            await asyncio.sleep(0.1)  # past the wake time
            rows = await engine.store.claim_due(engine.driver.owner, time.time(), LEASE_TTL, 10)
            assert [r.run_id for r in rows] == [run_id]
            assert await engine.driver.resume(rows[0]) is not None

        engine.handler = nap_then_answer
        gate.after_commit = scheduler_takes_it
        run_id = engine.admit()
        await gate.reached.wait()
        gate.open.set()

        async def finished() -> None:
            await engine.writer.flush()
            row = await engine.store.get_run(run_id)
            assert row is not None and row.status == RunStatus.SUCCEEDED
            assert row.response is not None
            assert orjson.loads(row.response.body) == {"attempt": 2}

        await assert_eventually(finished, within=10)
        assert engine.attempts == [1, 2]


async def test_an_event_posted_while_its_wait_is_being_stored_wakes_the_run_once(
    tmp_path: Path,
) -> None:
    """The event arrives while the wait's first call is still on its way to the store:
    whichever way the race falls (the event completes the stored wait, or the suspension
    finds the stored event), the run wakes once, with the event as the wait's output."""
    async with running(tmp_path, PutPending) as (engine, gate):

        async def wait_then_answer(request: web.Request) -> web.Response:
            run_id, attempt = request.headers[wire.RUN_ID], int(request.headers[wire.ATTEMPT])
            answer = await engine.driver.wait(
                run_id,
                attempt,
                "paid",
                event="order.paid",
                match={"data.order": 7},
                timeout_in=None,
                lookback=None,
                now=time.time(),
            )
            if not answer.done:
                return web.Response(status=202)
            return web.Response(body=answer.body, content_type="application/json")

        engine.handler = wait_then_answer
        run_id = engine.admit()
        await gate.reached.wait()
        posting = spawn(
            engine.driver.post_event("e1", "order.paid", b'{"order":7}', time.time()),
            name="post-event",
        )
        await asyncio.sleep(0.05)
        assert not posting.done()  # the event waits for the wait to be stored first
        gate.open.set()
        added = await posting
        assert added.new

        async def finished() -> None:
            await engine.writer.flush()
            row = await engine.store.get_run(run_id)
            assert row is not None and row.status == RunStatus.SUCCEEDED
            assert row.response is not None
            event = orjson.loads(row.response.body)["event"]
            assert (event["id"], event["data"]) == ("e1", {"order": 7})

        await assert_eventually(finished, within=10)
        assert engine.attempts == [1, 2]


async def test_a_held_client_that_never_reads_is_detached_and_the_attempt_goes_on(
    engine: Engine,
) -> None:
    """The engine never waits for a client: one that takes nothing keeps its place while
    what it has not read is stored (it reads it from the store later), and is detached
    past `max_response` once it falls FOLLOW_LIMIT behind; the attempt reads the backend
    to the end at the backend's pace, with the body's tail in memory bounded."""
    chunk = b"x" * (256 * 1024)
    chunks = FOLLOW_LIMIT // len(chunk) * 3
    cap = FOLLOW_LIMIT

    async def fast_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(chunk)
        await response.write_eof()
        return response

    engine.handler = fast_stream
    route = dataclasses.replace(
        engine.route, settings=dataclasses.replace(engine.route.settings, max_response=cap)
    )
    live = engine.driver.admit(route, StoredRequest("GET", "/stream", [], b""))
    engine.driver.hold(live)  # as the ingress does for the original client
    try:
        await assert_eventually(lambda: _started(live), within=10)
        stream = live.stream
        assert stream is not None
        reader = stream.join()  # a client that reads nothing
        peak = 0

        async def finished() -> None:
            nonlocal peak
            peak = max(peak, stream.size - stream.base)
            await engine.writer.flush()
            row = await engine.store.get_run(live.run.run_id)
            assert row is not None and row.status == RunStatus.SUCCEEDED
            assert row.response is not None and row.response.kept == BODY_TOO_LARGE

        await assert_eventually(finished, within=20, interval=0.01)
        assert reader.detached is Detached.SLOW
        assert stream.size == chunks * len(chunk)
        assert stream.size - stream.base <= TAIL_KEEP + len(chunk)  # what it held was dropped
    finally:
        engine.driver.release(live)


async def _started(live: LiveRun) -> None:
    assert live.stream is not None
