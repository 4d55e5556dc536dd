"""The reference client against a real HTTP stub of the sidecar, and the example backends.

The stub (`sidecar_stub.py`) speaks SPEC.md §4 over a real socket and logs every call, so
the tests check what actually went over the wire. Each client scenario runs with the four
ways to get a context (the `make_ctx` fixture): StepClient, bare RunContext,
SyncStepClient, bare SyncRunContext.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from step_protocol import (
    RunContext,
    SidecarError,
    StaleAttempt,
    StepClient,
    StepProtocolError,
    SyncRunContext,
    SyncStepClient,
    wire,
)
from tests.unit.sidecar_stub import PROBLEM, RUN, WAKE, MakeCtx, Sidecar

ROOT = Path(__file__).resolve().parents[2]


class Counter:
    """A step function that counts its runs."""

    def __init__(self, value: Any):
        self.value = value
        self.runs = 0

    def __call__(self) -> Any:
        self.runs += 1
        return self.value


# --- client scenarios ------------------------------------------------------------------


async def test_new_steps_are_put_with_the_bearer_token(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    assert ctx.durable
    assert await ctx.step("quote", lambda: {"total": 42}) == {"total": 42}
    assert await ctx.step("charge", lambda: "ch_1") == "ch_1"
    assert sidecar.steps == {"quote": {"total": 42}, "charge": "ch_1"}
    assert [(c.method, c.raw_path, c.auth) for c in sidecar.calls] == [
        ("PUT", f"/v1/runs/{RUN}/steps/quote", "Bearer tok-1"),
        ("PUT", f"/v1/runs/{RUN}/steps/charge", "Bearer tok-1"),
    ]
    assert sidecar.calls[0].body["output"] == {"total": 42}
    assert set(sidecar.calls[0].body) == {"output", "started_at", "duration_ms"}
    assert sidecar.calls[0].query == ""


async def test_memoized_steps_are_not_run_again(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.steps = {"quote": {"total": 42}}
    steps_header = wire.encode_steps(sidecar.steps)
    ctx = make_ctx(sidecar.headers(attempt=2, steps=steps_header))
    quote, charge = Counter({"total": 0}), Counter("ch_1")
    assert await ctx.step("quote", quote) == {"total": 42}
    assert await ctx.step("charge", charge) == "ch_1"
    assert (quote.runs, charge.runs) == (0, 1)
    assert sidecar.puts() == ["charge"]
    assert sidecar.gets() == []


async def test_repeated_ids_are_numbered(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    for i in range(3):
        assert await ctx.step("item", Counter(i * 10)) == i * 10
    await ctx.step("other", lambda: "x")
    assert sidecar.puts() == ["item", "item:1", "item:2", "other"]
    assert sidecar.steps == {"item": 0, "item:1": 10, "item:2": 20, "other": "x"}


async def test_numbering_matches_memoized_loop_steps(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    """A retry of a loop gets the same ids, so completed iterations are skipped."""
    sidecar.steps = {"item": "a", "item:1": "b"}
    ctx = make_ctx(sidecar.headers(attempt=2, steps=wire.encode_steps(sidecar.steps)))
    fns = [Counter("A"), Counter("B"), Counter("C")]
    assert [await ctx.step("item", fn) for fn in fns] == ["a", "b", "C"]
    assert [fn.runs for fn in fns] == [0, 0, 1]
    assert sidecar.puts() == ["item:2"]


async def test_fetch_makes_one_get_on_first_need(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.steps = {"a": 1, "b": {"big": "x" * 10}}
    ctx = make_ctx(sidecar.headers(attempt=2, steps="fetch"))
    assert sidecar.calls == []  # lazy: nothing until a step needs it
    fa, fb, fc = Counter(0), Counter(0), Counter(3)
    assert await ctx.step("a", fa) == 1
    assert await ctx.step("b", fb) == {"big": "x" * 10}
    assert await ctx.step("c", fc) == 3
    assert (fa.runs, fb.runs, fc.runs) == (0, 0, 1)
    assert sidecar.gets() == ["/steps"]
    assert sidecar.puts() == ["c"]


async def test_malformed_steps_header_falls_back_to_fetch(
    sidecar: Sidecar, make_ctx: MakeCtx, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar.steps = {"a": 1}
    ctx = make_ctx(sidecar.headers(attempt=2, steps="%%not-base64%%"))
    assert await ctx.step("a", lambda: 0) == 1
    assert sidecar.gets() == ["/steps"]
    assert "Durable-Steps" in caplog.text


async def test_conflict_returns_the_stored_output(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    """Another attempt recorded the step after our headers were built: first write wins."""
    sidecar.steps = {"charge": "ch_first"}
    ctx = make_ctx(sidecar.headers(attempt=2))
    assert await ctx.step("charge", lambda: "ch_second") == "ch_first"
    assert [(c.method, c.raw_path) for c in sidecar.calls] == [
        ("PUT", f"/v1/runs/{RUN}/steps/charge"),
        ("GET", f"/v1/runs/{RUN}/steps/charge"),
    ]
    assert sidecar.steps == {"charge": "ch_first"}


async def test_same_output_again_is_fine(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.steps = {"charge": "ch_1"}
    ctx = make_ctx(sidecar.headers(attempt=2))
    assert await ctx.step("charge", lambda: "ch_1") == "ch_1"
    assert sidecar.gets() == []


async def test_stale_attempt_raises(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    sidecar.token = "tok-2"  # attempt 2 has started
    with pytest.raises(StaleAttempt) as raised:
        await ctx.step("quote", lambda: 1)
    assert raised.value.status == 409
    assert raised.value.problem["type"] == PROBLEM + "stale-attempt"
    assert sidecar.steps == {}


async def test_other_refusals_raise_sidecar_error(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.put_status = 413
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(SidecarError) as raised:
        await ctx.step("huge", lambda: "x")
    assert type(raised.value) is SidecarError
    assert raised.value.status == 413
    assert raised.value.problem["type"] == PROBLEM + "too-large"
    assert "413" in str(raised.value)


async def test_failed_step_is_reported_and_reraised(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    boom = RuntimeError("provider timeout")

    def fail() -> Any:
        raise boom

    with pytest.raises(RuntimeError) as raised:
        await ctx.step("charge", fail)
    assert raised.value is boom
    assert sidecar.errors == [("charge", "provider timeout")]
    assert sidecar.steps == {}
    # The failure report is best effort: a stale token does not mask the real error.
    sidecar.token = "tok-2"
    with pytest.raises(RuntimeError):
        await ctx.step("charge", fail)


WORK_S = 0.02
"""How long the timed step functions below take, at least."""


def assert_timed(body: dict[str, Any], before: float, after: float) -> None:
    """`started_at` and `duration_ms` of a step PUT fit inside the call that made it,
    and the duration covers the step's work."""
    started_at, took = body["started_at"], body["duration_ms"]
    assert type(started_at) is float and type(took) is float, body
    # Two clocks (wall and monotonic), each read to the microsecond: allow one ms.
    assert before - 0.001 <= started_at <= after
    assert WORK_S * 1000 <= took <= (after - before) * 1000 + 1
    assert started_at + took / 1000 <= after + 0.001


async def test_each_try_is_put_with_its_timing(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())

    def work() -> str:
        time.sleep(WORK_S)
        return "done"

    def fail() -> None:
        time.sleep(WORK_S)
        raise RuntimeError("provider timeout")

    before = time.time()
    with pytest.raises(RuntimeError):
        await ctx.step("charge", fail)
    between = time.time()
    assert await ctx.step("charge", work) == "done"
    after = time.time()
    error, output = (c.body for c in sidecar.calls)
    assert error["error"] == {"message": "provider timeout"}
    assert_timed(error, before, between)
    assert output["output"] == "done"
    assert_timed(output, between, after)


async def test_sync_writes_ask_for_commit(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    await ctx.step("pay", lambda: 1, sync=True)
    await ctx.step("mail", lambda: 2)
    assert [c.query for c in sidecar.calls] == ["durable=sync", ""]


async def test_step_ids_are_one_quoted_segment(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    await ctx.step("fetch page:1/2 é", lambda: 1)
    assert sidecar.calls[0].raw_path == f"/v1/runs/{RUN}/steps/fetch%20page%3A1%2F2%20%C3%A9"
    assert sidecar.steps == {"fetch page:1/2 é": 1}


async def test_outputs_must_be_json(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    for ctx in (make_ctx(sidecar.headers()), make_ctx({})):
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await ctx.step("obj", object)
    assert sidecar.calls == []


async def test_step_ids_are_limited(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    fn = Counter(1)
    await ctx.step("x" * wire.MAX_STEP_ID, fn)
    with pytest.raises(ValueError, match="longer than"):
        await ctx.step("x" * (wire.MAX_STEP_ID + 1), fn)
    with pytest.raises(ValueError, match="empty"):
        await ctx.step("", fn)
    assert fn.runs == 1


async def test_sleeps_and_waits_past_the_bounds_are_refused_before_any_call(
    sidecar: Sidecar, make_ctx: MakeCtx
) -> None:
    """The clients check SPEC §4.9's bounds themselves, with or without the gateway."""
    far = "9999-12-31T23:59:59Z"
    for ctx in (make_ctx(sidecar.headers()), make_ctx({})):
        for seconds, until in ((1e20, None), (wire.MAX_DURATION + 1, None), (None, far)):
            with pytest.raises(ValueError, match="too long|too far ahead"):
                await ctx.sleep("nap", seconds, until=until)
        for options in (
            {"timeout": 1e308},
            {"lookback": "99999999999d"},
            {"match": {f"data.k{i}": i for i in range(wire.MAX_MATCH_KEYS + 1)}},
        ):
            with pytest.raises(ValueError, match="too long|at most"):
                await ctx.wait("paid", "order.paid", **options)
    assert sidecar.calls == []


async def test_without_gateway_steps_just_run(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx({"Content-Type": "application/json", "X-Other": "1"})
    assert ctx.durable is False
    fn = Counter({"a": 1})
    assert await ctx.step("a", fn) == {"a": 1}
    assert await ctx.step("a", fn) == {"a": 1}
    assert fn.runs == 2
    assert sidecar.calls == []


async def test_unreachable_sidecar_raises(make_ctx: MakeCtx, unused_tcp_port: int) -> None:
    headers = {
        "Durable-Run-Id": RUN,
        "Durable-Sidecar": f"http://127.0.0.1:{unused_tcp_port}/v1/runs/{RUN}",
        "Durable-Token": "t",
    }
    ctx = make_ctx(headers)
    with pytest.raises(SidecarError) as raised:
        await ctx.step("a", lambda: 1)
    assert raised.value.status is None


# --- async-only and sync-only behaviour ------------------------------------------------


async def test_async_functions_are_awaited(sidecar: Sidecar) -> None:
    async def quote() -> dict[str, int]:
        await asyncio.sleep(WORK_S)
        return {"total": 42}

    async with StepClient() as client:
        ctx = client.context(sidecar.headers())
        before = time.time()
        assert await ctx.step("quote", quote) == {"total": 42}
        after = time.time()
    assert sidecar.steps == {"quote": {"total": 42}}
    assert_timed(sidecar.calls[0].body, before, after)  # the await is part of the work


async def test_gathered_steps_are_numbered_in_call_order(sidecar: Sidecar) -> None:
    async def slow(value: str, release: asyncio.Event) -> str:
        await release.wait()
        return value

    first, second, second_recorded = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sidecar.on_record = lambda step_id: second_recorded.set() if step_id == "llm:1" else None
    async with StepClient() as client:
        ctx = client.context(sidecar.headers(steps="fetch"))
        second.set()  # the second call finishes first: ids must not follow completion order
        both = asyncio.gather(
            ctx.step("llm", lambda: slow("one", first)),
            ctx.step("llm", lambda: slow("two", second)),
        )
        await second_recorded.wait()
        first.set()
        assert list(await both) == ["one", "two"]
    assert sidecar.steps == {"llm": "one", "llm:1": "two"}
    assert sidecar.gets() == ["/steps"]  # concurrent first needs share one fetch


@pytest.mark.parametrize("flavour", ["StepClient", "SyncStepClient"])
async def test_clients_keep_one_connection_alive(sidecar: Sidecar, flavour: str) -> None:
    if flavour == "StepClient":
        async with StepClient() as client:
            for request in range(2):
                ctx = client.context(sidecar.headers())
                for i in range(3):
                    await ctx.step(f"s{request}-{i}", Counter(i))
    else:

        def run() -> None:
            with SyncStepClient() as sync_client:
                for request in range(2):
                    ctx = sync_client.context(sidecar.headers())
                    for i in range(3):
                        ctx.step(f"s{request}-{i}", Counter(i))

        await asyncio.to_thread(run)
    assert len(sidecar.calls) == 6
    assert len({c.peer for c in sidecar.calls}) == 1


async def test_sync_client_replaces_a_connection_the_sidecar_closed(sidecar: Sidecar) -> None:
    with SyncStepClient() as client:
        ctx = client.context(sidecar.headers())
        await asyncio.to_thread(ctx.step, "a", lambda: 1)
        (kept_alive,) = sidecar.transports
        kept_alive.close()  # the sidecar drops the idle keep-alive connection
        assert await asyncio.to_thread(ctx.step, "b", lambda: 2) == 2
    assert sidecar.steps == {"a": 1, "b": 2}
    assert len({c.peer for c in sidecar.calls}) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"durable-run-id": RUN, "durable-sidecar": "http://x", "durable-token": "t"},
        {"DURABLE-RUN-ID": RUN, "Durable-SIDECAR": "http://x/", "durable-Token": "t"},
    ],
)
def test_header_names_are_case_insensitive(headers: dict[str, str]) -> None:
    ctx = SyncRunContext.from_headers({**headers, "Durable-Attempt": "3"})
    assert (ctx.durable, ctx.run_id, ctx.attempt) == (True, RUN, 3)


async def test_multidict_headers(sidecar: Sidecar) -> None:
    ctx = RunContext.from_headers(CIMultiDict(sidecar.headers(attempt=4)))
    assert (ctx.durable, ctx.run_id, ctx.attempt) == (True, RUN, 4)


@pytest.mark.parametrize(
    "headers",
    [
        {"Durable-Run-Id": RUN},
        {"Durable-Run-Id": RUN, "Durable-Sidecar": "http://x"},
        {"Durable-Token": "t", "Durable-Sidecar": "http://x"},
        {"Durable-Run-Id": RUN, "Durable-Sidecar": "http://x", "Durable-Token": "t",
         "Durable-Attempt": "two"},
    ],
)  # fmt: skip
def test_incomplete_headers_are_an_error(headers: dict[str, str]) -> None:
    with pytest.raises(StepProtocolError):
        RunContext.from_headers(headers)
    with pytest.raises(StepProtocolError):
        SyncRunContext.from_headers(headers)


def test_context_without_gateway_reports_attempt_one() -> None:
    ctx = SyncRunContext.from_headers({})
    assert (ctx.durable, ctx.run_id, ctx.attempt) == (False, None, 1)
    assert ctx.step("a", lambda: 5) == 5


# --- the example backends --------------------------------------------------------------


@dataclass
class Backend:
    url: str
    proc: asyncio.subprocess.Process


async def start(*argv: str) -> Backend:
    proc = await asyncio.create_subprocess_exec(
        *argv, "--port", "0", stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("listening on "), line
    return Backend(f"http://127.0.0.1:{int(line.split()[-1])}", proc)


async def stop(backend: Backend) -> None:
    if backend.proc.returncode is None:
        backend.proc.terminate()
    await backend.proc.wait()


BACKENDS = {
    "python": [sys.executable, "examples/backend.py"],
    "node": ["node", "examples/node_backend.mjs"],
}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    argv = BACKENDS[request.param]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    started = await start(*argv)
    yield started
    await stop(started)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, CIMultiDict[str]]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read()), CIMultiDict(resp.headers)


async def test_backend_health_and_echo(backend: Backend, http: aiohttp.ClientSession) -> None:
    status, _, _ = await get_json(http, "GET", backend.url + "/_health")
    assert status == 200
    status, echo, _ = await get_json(
        http,
        "POST",
        backend.url + "/demo/echo?a=1&b=two",
        data=b'{"hello": "world"}',
        headers={"X-Request-Id": "req-7", "Content-Type": "application/json"},
    )
    assert status == 200
    assert echo["method"] == "POST"
    assert echo["path"] == "/demo/echo"
    assert echo["query"] == {"a": "1", "b": "two"}
    assert echo["headers"]["x-request-id"] == "req-7"  # names are lowercased
    assert echo["body"] == '{"hello": "world"}'
    status, echo, _ = await get_json(http, "GET", backend.url + "/demo/echo")
    assert (status, echo["method"], echo["body"]) == (200, "GET", "")


async def test_backend_steps_without_gateway(backend: Backend, http: aiohttp.ClientSession) -> None:
    status, body, _ = await get_json(http, "POST", backend.url + "/demo/steps?n=2")
    assert status == 200
    assert body == {
        "run_id": None,
        "attempt": 1,
        "results": [
            {"step": 1, "value": "computed on attempt 1"},
            {"step": 2, "value": "computed on attempt 1"},
        ],
    }
    status, counts, _ = await get_json(http, "GET", backend.url + "/_counts?run_id=none")
    assert counts == {"counts": {"step-1": 1, "step-2": 1}}


async def test_backend_resumes_from_the_failed_step(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    """The README story without a gateway: attempt 1 fails at step 2, attempt 2 resumes."""
    url = backend.url + "/demo/steps?n=3&fail_at=2"
    status, body, _ = await get_json(http, "POST", url, headers=sidecar.headers(attempt=1))
    assert (status, body["attempt"]) == (500, 1)
    assert list(sidecar.steps) == ["step-1"]

    sidecar.token = "tok-2"
    headers = sidecar.headers(attempt=2, steps=wire.encode_steps(sidecar.steps))
    status, body, _ = await get_json(http, "POST", url, headers=headers)
    assert status == 200
    assert body["run_id"] == RUN
    assert [r["value"] for r in body["results"]] == [
        "computed on attempt 1",
        "computed on attempt 2",
        "computed on attempt 2",
    ]
    status, counts, _ = await get_json(http, "GET", f"{backend.url}/_counts?run_id={RUN}")
    assert counts == {"counts": {"step-1": 1, "step-2": 1, "step-3": 1}}
    status, everything, _ = await get_json(http, "GET", backend.url + "/_counts")
    assert everything[RUN] == counts["counts"]
    assert all(c.auth == "Bearer tok-1" for c in sidecar.calls[:1])
    assert all(c.auth == "Bearer tok-2" for c in sidecar.calls[1:])


async def test_backend_puts_each_try_with_its_timing(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    """Both example backends time each step's work: the output and the failed try."""
    work_ms = 20
    url = f"{backend.url}/demo/steps?n=2&raise_at=2&work_ms={work_ms}"
    before = time.time()
    status, body, _ = await get_json(http, "POST", url, headers=sidecar.headers())
    after = time.time()
    assert (status, body["error"]) == (500, "step-2 failed on attempt 1")
    assert sidecar.steps == {"step-1": {"step": 1, "value": "computed on attempt 1"}}
    assert sidecar.errors == [("step-2", "step-2 failed on attempt 1")]
    recorded, failed = (c.body for c in sidecar.calls)
    assert (set(recorded), set(failed)) == (
        {"output", "started_at", "duration_ms"},
        {"error", "started_at", "duration_ms"},
    )
    ends = []
    for put in (recorded, failed):
        started_at, took = put["started_at"], put["duration_ms"]
        assert isinstance(started_at, int | float) and isinstance(took, int | float), put
        assert not isinstance(started_at, bool) and not isinstance(took, bool)
        # Node's wall clock counts whole ms and its timers may fire up to 1 ms early.
        assert before - 0.001 <= started_at <= after
        assert work_ms - 1 <= took <= (after - before) * 1000 + 1
        ends.append(started_at + took / 1000)
    assert ends[0] <= failed["started_at"] + 0.001  # step-2 began once step-1 was done
    assert ends[1] <= after + 0.001


async def test_backend_fetches_large_step_state(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    sidecar.steps = {"step-1": {"step": 1, "value": "stored"}}
    headers = sidecar.headers(attempt=2, steps="fetch")
    status, body, _ = await get_json(http, "GET", backend.url + "/demo/steps?n=2", headers=headers)
    assert status == 200
    assert body["results"][0] == {"step": 1, "value": "stored"}
    assert sidecar.gets() == ["/steps"]
    assert sidecar.puts() == ["step-2"]


@pytest.mark.parametrize(
    ("query", "status", "header"),
    [
        ("mode=500", 500, None),
        ("mode=503&retry_after=7", 503, ("Retry-After", "7")),
        ("mode=400", 400, None),
        ("mode=noretry", 500, ("Durable-Retry", "no")),
    ],
)
async def test_backend_failure_modes(
    backend: Backend,
    http: aiohttp.ClientSession,
    query: str,
    status: int,
    header: tuple[str, str] | None,
) -> None:
    url = f"{backend.url}/demo/steps?n=2&fail_at=1&fail_times=2&{query}"
    for attempt in (1, 2):
        headers = {"Durable-Attempt": str(attempt)}  # ignored without the other headers
        got, body, resp_headers = await get_json(http, "POST", url, headers=headers)
        assert (got, body["attempt"]) == (status, 1)
        if header is not None:
            assert resp_headers[header[0]] == header[1]


async def test_backend_fail_times_counts_attempts(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    url = f"{backend.url}/demo/steps?n=1&fail_at=1&fail_times=2"
    statuses = []
    for attempt in (1, 2, 3):
        headers = sidecar.headers(attempt=attempt)
        statuses.append((await get_json(http, "POST", url, headers=headers))[0])
    assert statuses == [500, 500, 200]


async def test_backend_drop_closes_the_connection(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get_json(http, "POST", backend.url + "/demo/steps?fail_at=1&mode=drop")


async def test_backend_rejects_bad_queries(backend: Backend, http: aiohttp.ClientSession) -> None:
    for query in ("mode=nope", "n=-1", "fail_at=x"):
        status, _, _ = await get_json(http, "GET", f"{backend.url}/demo/steps?{query}")
        assert status == 400, query


async def test_backend_sleep_without_gateway(backend: Backend, http: aiohttp.ClientSession) -> None:
    """No Durable-* headers: the nap sleeps in-process (0 s here) and the handler runs through."""
    status, body, _ = await get_json(http, "POST", backend.url + "/demo/sleep?seconds=0&n=3")
    assert status == 200
    assert body == {
        "run_id": None,
        "attempt": 1,
        "results": [{"step": i, "value": "computed on attempt 1"} for i in (1, 2, 3)],
    }


async def test_backend_wait_without_gateway_is_501(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    """Nothing could deliver the event without the gateway: the examples answer 501."""
    url = backend.url + "/demo/wait?event=order.paid&order_id=42&timeout=30"
    status, body, _ = await get_json(http, "GET", url)
    assert status == 501
    assert "without the gateway" in body["error"]


async def test_backend_sleep_suspends_then_resumes(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    url = backend.url + "/demo/sleep?seconds=60&n=2"
    status, body, _ = await get_json(http, "POST", url, headers=sidecar.headers())
    assert (status, body) == (
        202,
        {"suspended": True, "kind": "sleep", "wake_at": WAKE, "step_id": "nap"},
    )
    assert list(sidecar.steps) == ["step-1"]
    assert sidecar.posts() == [("nap", "sleep", {"seconds": 60})]

    sidecar.token = "tok-2"  # after the wake time: the gateway re-invokes
    sidecar.answers["nap"] = (200, {"done": True, "wake_at": WAKE})
    headers = sidecar.headers(attempt=2, steps=wire.encode_steps(sidecar.steps))
    status, body, _ = await get_json(http, "POST", url, headers=headers)
    assert status == 200
    assert [r["value"] for r in body["results"]] == [
        "computed on attempt 1",
        "computed on attempt 2",
    ]
    # Attempt 3 finds the nap in Durable-Steps and makes no sleep call at all.
    sidecar.token = "tok-3"
    headers = sidecar.headers(attempt=3, steps=wire.encode_steps(sidecar.steps))
    status, body, _ = await get_json(http, "POST", url, headers=headers)
    assert (status, body["attempt"]) == (200, 3)
    assert len(sidecar.posts()) == 2
    status, counts, _ = await get_json(http, "GET", f"{backend.url}/_counts?run_id={RUN}")
    assert counts == {"counts": {"step-1": 1, "step-2": 1}}


async def test_backend_wait_suspends_then_gets_the_event(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    url = backend.url + "/demo/wait?event=order.paid&order_id=42&timeout=30&lookback=10m"
    sidecar.answers["paid"] = (202, {"event": None, "pending": True, "timeout_at": WAKE})
    status, body, _ = await get_json(http, "POST", url, headers=sidecar.headers())
    assert (status, body) == (
        202,
        {"suspended": True, "kind": "wait", "wake_at": WAKE, "step_id": "paid"},
    )
    assert sidecar.posts() == [
        (
            "paid",
            "wait",
            {
                "event": "order.paid",
                "match": {"data.order_id": "42"},
                "timeout": 30,
                "lookback": "10m",
            },
        )
    ]

    event = {"name": "order.paid", "id": "pay_1", "data": {"order_id": "42"}, "ts": WAKE}
    sidecar.token = "tok-2"
    sidecar.answers["paid"] = (200, {"event": event})
    headers = sidecar.headers(attempt=2, steps=wire.encode_steps(sidecar.steps))
    status, body, _ = await get_json(http, "POST", url, headers=headers)
    assert status == 200
    assert body["event"] == event
    assert body["results"][1] == {"step": 2, "value": "computed on attempt 2", "event": event}
    assert sidecar.steps["paid"] == event


async def test_backend_wait_timed_out(
    backend: Backend, http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    sidecar.answers["paid"] = (200, {"event": None})
    url = backend.url + "/demo/wait?event=order.paid"
    status, body, _ = await get_json(http, "POST", url, headers=sidecar.headers(attempt=2))
    assert (status, body["event"]) == (200, None)
    assert sidecar.posts() == [("paid", "wait", {"event": "order.paid"})]


async def test_backend_rejects_bad_sleep_and_wait_queries(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    for path in ("sleep?seconds=x", "sleep?seconds=-1", "sleep?n=0", "wait?timeout=soon"):
        status, _, _ = await get_json(http, "GET", f"{backend.url}/demo/{path}")
        assert status == 400, path


async def test_backend_streams_chunks(backend: Backend, http: aiohttp.ClientSession) -> None:
    async with http.get(backend.url + "/demo/stream?chunks=3&interval_ms=1") as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        lines = [line async for line in resp.content]
    assert lines == [b"chunk 1\n", b"chunk 2\n", b"chunk 3\n"]


async def test_python_backend_steps_sync_flag(
    http: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    started = await start(sys.executable, "examples/backend.py", "--steps-sync")
    try:
        url = started.url + "/demo/steps?n=2"
        status, _, _ = await get_json(http, "POST", url, headers=sidecar.headers())
    finally:
        await stop(started)
    assert status == 200
    assert [c.query for c in sidecar.calls] == ["durable=sync", "durable=sync"]


# --- the framework examples ------------------------------------------------------------


def load_example(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def flask_client(sidecar: Sidecar) -> Iterator[Any]:
    app = load_example("flask_app.py").create_app()
    with app.extensions["step_client"]:
        yield app.test_client()


async def test_flask_example_sleeps(flask_client: Any, sidecar: Sidecar) -> None:
    def post(headers: dict[str, str]) -> Any:
        return flask_client.post("/api/remind?delay=0", data="hello", headers=headers)

    plain = await asyncio.to_thread(post, {})
    assert (plain.status_code, plain.get_json()["sent"]) == (200, "hello")
    suspended = await asyncio.to_thread(post, sidecar.headers())
    assert suspended.status_code == 202
    assert suspended.get_json() == {
        "suspended": True,
        "kind": "sleep",
        "wake_at": WAKE,
        "step_id": "cooldown",
    }
    assert sidecar.puts() == ["draft"]


async def test_flask_example_records_steps(flask_client: Any, sidecar: Sidecar) -> None:
    text = "first paragraph\n\nsecond paragraph"

    def post(headers: dict[str, str]) -> Any:
        return flask_client.post("/api/digest", data=text, headers=headers)

    plain = await asyncio.to_thread(post, {})
    assert plain.status_code == 200 and plain.get_json()["run_id"] is None
    durable = await asyncio.to_thread(post, sidecar.headers())
    assert durable.status_code == 200
    assert durable.get_json()["summaries"] == ["first paragraph", "second paragraph"]
    assert sidecar.puts() == ["summary", "summary:1", "store"]
    assert sidecar.calls[-1].query == "durable=sync"


async def call_asgi(
    app: Any, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    """One request through an ASGI app, inside its lifespan (no httpx or uvicorn needed)."""
    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    async with asyncio.TaskGroup() as tg:
        tg.create_task(app(lifespan_scope, lifespan_in.get, lifespan_out.put))
        await lifespan_in.put({"type": "lifespan.startup"})
        assert (await lifespan_out.get())["type"] == "lifespan.startup.complete"
        await app(scope, receive, send)
        await lifespan_in.put({"type": "lifespan.shutdown"})
        assert (await lifespan_out.get())["type"] == "lifespan.shutdown.complete"
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_starlette_example_records_steps(sidecar: Sidecar) -> None:
    app = load_example("starlette_app.py").create_app()
    headers = {**sidecar.headers(), "Content-Type": "application/json"}
    status, body = await call_asgi(app, "POST", "/api/order", headers, b'{"sku": "A1"}')
    assert status == 200
    assert orjson.loads(body) == {"run_id": RUN, "order": "ok", "charge": "ch_3:charge"}
    assert sidecar.puts() == ["quote", "charge"]
    assert [c.query for c in sidecar.calls] == ["", "durable=sync"]


async def test_starlette_example_waits(sidecar: Sidecar) -> None:
    app = load_example("starlette_app.py").create_app()
    status, body = await call_asgi(app, "POST", "/api/ship/42", sidecar.headers(), b"")
    assert status == 202
    assert orjson.loads(body) == {
        "suspended": True,
        "kind": "wait",
        "wake_at": None,
        "step_id": "paid",
    }
    assert sidecar.posts() == [
        ("paid", "wait", {"event": "order.paid", "match": {"data.order_id": "42"}, "timeout": "1h"})
    ]
    sidecar.answers["paid"] = (200, {"event": {"name": "order.paid", "data": {"order_id": "42"}}})
    status, body = await call_asgi(app, "POST", "/api/ship/42", sidecar.headers(attempt=2), b"")
    assert (status, orjson.loads(body)) == (200, {"run_id": RUN, "shipped": True, "slot": 2})
