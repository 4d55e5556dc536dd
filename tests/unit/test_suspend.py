"""Durable sleep and wait in the client, against the real-socket sidecar stub, and the
framework helpers that turn `Suspend` into the suspend response.

Each client scenario runs with the four ways to get a context, like test_client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from step_protocol import (
    SidecarError,
    StaleAttempt,
    StepClient,
    StepProtocolError,
    Suspend,
    SuspendKind,
    aiohttp_middleware,
    flask_register,
    starlette_exception_handler,
    wire,
)
from tests.unit.sidecar_stub import RUN, WAKE, Ctx, MakeCtx, Sidecar
from tests.unit.test_client import call_asgi

EVENT = {"name": "order.paid", "id": "pay_1", "data": {"order_id": "42"}, "ts": WAKE}


def memo(steps: dict[str, Any]) -> dict[str, str]:
    """Durable-Steps for these completed steps (attempt 2)."""
    value = wire.encode_steps(steps)
    assert value is not None
    return {"Durable-Steps": value}


# --- sleep ----------------------------------------------------------------------------


async def test_sleep_not_over_raises_suspend(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(Suspend) as raised:
        await ctx.sleep("nap", 5)
    suspend = raised.value
    assert (suspend.kind, suspend.step_id) == (SuspendKind.SLEEP, "nap")
    assert suspend.wake_at == datetime(2025, 1, 31, 9, 31, tzinfo=UTC)
    assert suspend.timeout_at is None
    assert not isinstance(suspend, StepProtocolError)
    assert [(c.method, c.raw_path, c.auth) for c in sidecar.calls] == [
        ("POST", f"/v1/runs/{RUN}/steps/nap/sleep", "Bearer tok-1")
    ]
    assert sidecar.posts() == [("nap", "sleep", {"seconds": 5})]
    assert sidecar.steps == {}


async def test_sleep_over_returns(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    done = {"done": True, "wake_at": WAKE}
    sidecar.answers["nap"] = (200, done)
    ctx = make_ctx(sidecar.headers(attempt=2))
    await ctx.sleep("nap", 5)
    assert sidecar.steps == {"nap": done}


async def test_sleep_until_is_sent_as_rfc3339(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    until = datetime(2025, 1, 31, 10, 31, 0, 250_000, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(Suspend):
        await ctx.sleep("nap", until=until)
    with pytest.raises(Suspend):
        await ctx.sleep("nap", until="2025-01-31T09:31:00Z")
    assert [body for _, _, body in sidecar.posts()] == [
        {"until": "2025-01-31T09:31:00.250Z"},
        {"until": "2025-01-31T09:31:00Z"},
    ]


async def test_memoized_sleep_needs_no_call(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    headers = sidecar.headers(attempt=2) | memo({"nap": {"done": True, "wake_at": WAKE}})
    ctx = make_ctx(headers)
    await ctx.sleep("nap", 3600)
    assert sidecar.calls == []


async def test_memoized_sleep_from_fetched_steps(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.steps = {"nap": {"done": True, "wake_at": WAKE}}
    ctx = make_ctx(sidecar.headers(attempt=2, steps="fetch"))
    await ctx.sleep("nap", 3600)
    assert sidecar.gets() == ["/steps"]
    assert sidecar.posts() == []


# --- wait -----------------------------------------------------------------------------


async def test_wait_pending_raises_suspend(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.answers["paid"] = (202, {"event": None, "pending": True, "timeout_at": WAKE})
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(Suspend) as raised:
        await ctx.wait(
            "paid", "order.paid", match={"data.order_id": "42"}, timeout="1h", lookback=600
        )
    suspend = raised.value
    assert (suspend.kind, suspend.step_id) == (SuspendKind.WAIT, "paid")
    assert suspend.wake_at == suspend.timeout_at == datetime(2025, 1, 31, 9, 31, tzinfo=UTC)
    assert sidecar.posts() == [
        (
            "paid",
            "wait",
            {
                "event": "order.paid",
                "match": {"data.order_id": "42"},
                "timeout": "1h",
                "lookback": 600,
            },
        )
    ]


async def test_wait_without_timeout_suspends_until_an_event(
    sidecar: Sidecar, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(Suspend) as raised:
        await ctx.wait("paid", "order.paid")
    assert raised.value.wake_at is None and raised.value.timeout_at is None
    assert "a matching event" in str(raised.value)
    assert sidecar.posts() == [("paid", "wait", {"event": "order.paid"})]


@pytest.mark.parametrize("event", [EVENT, None], ids=["event", "timeout"])
async def test_wait_done_returns_the_event_or_none(
    sidecar: Sidecar, make_ctx: MakeCtx, event: dict[str, Any] | None
) -> None:
    sidecar.answers["paid"] = (200, {"event": event})
    ctx = make_ctx(sidecar.headers(attempt=2))
    assert await ctx.wait("paid", "order.paid", timeout=timedelta(minutes=1)) == event
    assert sidecar.posts()[0][2]["timeout"] == 60.0
    assert sidecar.steps == {"paid": event}


@pytest.mark.parametrize("event", [EVENT, None], ids=["event", "timeout"])
async def test_memoized_wait_needs_no_call(
    sidecar: Sidecar, make_ctx: MakeCtx, event: dict[str, Any] | None
) -> None:
    """A timed-out wait is stored as null: present in Durable-Steps, so still no call."""
    ctx = make_ctx(sidecar.headers(attempt=2) | memo({"paid": event}))
    assert await ctx.wait("paid", "order.paid") == event
    assert sidecar.calls == []


async def test_wait_answer_must_hold_an_object(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.answers["paid"] = (200, {"event": "paid!"})
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(SidecarError, match="neither an object nor null"):
        await ctx.wait("paid", "order.paid")


# --- both -----------------------------------------------------------------------------


async def test_repeated_ids_are_shared_with_steps(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    sidecar.answers = {"x:1": (200, {"done": True, "wake_at": WAKE})}
    ctx = make_ctx(sidecar.headers())
    assert await ctx.step("x", lambda: 1) == 1
    await ctx.sleep("x", 0)
    with pytest.raises(Suspend) as raised:
        await ctx.wait("x", "e")
    assert raised.value.step_id == "x:2"
    assert sidecar.puts() == ["x"]
    assert [(step_id, kind) for step_id, kind, _ in sidecar.posts()] == [
        ("x:1", "sleep"),
        ("x:2", "wait"),
    ]


async def test_a_retry_skips_what_is_done_and_resumes(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    """Attempt 2 of step, sleep, step, wait: only the wait is asked again."""
    done = {"a": 1, "nap": {"done": True, "wake_at": WAKE}, "a:1": 2}
    ctx = make_ctx(sidecar.headers(attempt=2) | memo(done))
    assert await ctx.step("a", lambda: 0) == 1
    await ctx.sleep("nap", 60)
    assert await ctx.step("a", lambda: 0) == 2
    with pytest.raises(Suspend):
        await ctx.wait("a", "e")
    assert sidecar.puts() == []
    assert [step_id for step_id, _, _ in sidecar.posts()] == ["a:2"]


async def test_stale_attempt_and_bad_request(sidecar: Sidecar, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(sidecar.headers())
    sidecar.answers["bad"] = (400, None)
    with pytest.raises(SidecarError) as raised:
        await ctx.sleep("bad", 1)
    assert raised.value.status == 400 and type(raised.value) is SidecarError
    sidecar.token = "tok-2"
    with pytest.raises(StaleAttempt):
        await ctx.sleep("nap", 1)
    with pytest.raises(StaleAttempt):
        await ctx.wait("paid", "order.paid")


async def test_unreadable_wake_time_still_suspends(
    sidecar: Sidecar, make_ctx: MakeCtx, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar.answers["nap"] = (202, {"done": False, "wake_at": "tomorrow"})
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(Suspend) as raised:
        await ctx.sleep("nap", 1)
    assert raised.value.wake_at is None
    assert "wake_at" in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ctx: ctx.sleep("nap"), "exactly one"),
        (lambda ctx: ctx.sleep("nap", 1, until=WAKE), "exactly one"),
        (lambda ctx: ctx.sleep("nap", -1), ">= 0"),
        (lambda ctx: ctx.sleep("nap", until="soon"), "RFC 3339"),
        (lambda ctx: ctx.sleep("nap", until=datetime(2025, 1, 1)), "naive"),
        (lambda ctx: ctx.wait("paid", ""), "event name"),
        (lambda ctx: ctx.wait("paid", "e", timeout="an hour"), "invalid duration"),
        (lambda ctx: ctx.wait("paid", "e", match={"data..id": 1}), "dotted path"),
    ],
)
async def test_bad_arguments_fail_before_any_call(
    sidecar: Sidecar, make_ctx: MakeCtx, call: Callable[[Ctx], Any], message: str
) -> None:
    ctx = make_ctx(sidecar.headers())
    with pytest.raises(ValueError, match=message):
        await call(ctx)
    assert sidecar.calls == []
    with pytest.raises(Suspend) as raised:  # and the refused call took no id
        await ctx.sleep("nap", 1)
    assert raised.value.step_id == "nap"


async def test_suspend_inside_a_step_is_not_a_failed_try(sidecar: Sidecar) -> None:
    async with StepClient() as client:
        ctx = client.context(sidecar.headers())

        async def nested() -> None:
            await ctx.sleep("inner", 1)

        with pytest.raises(Suspend):
            await ctx.step("outer", nested)
    assert sidecar.errors == []


# --- outside the gateway --------------------------------------------------------------


class SleepSpy:
    """Records the delays asked for, then really sleeps (cut to 0 past a second)."""

    def __init__(self, real: Callable[[float], Any]):
        self.real = real
        self.delays: list[float] = []

    def __call__(self, delay: float) -> Any:
        self.delays.append(delay)
        return self.real(delay if delay < 1 else 0)


async def test_without_gateway_sleep_really_sleeps(
    make_ctx: MakeCtx, monkeypatch: pytest.MonkeyPatch
) -> None:
    spies = SleepSpy(asyncio.sleep), SleepSpy(time.sleep)
    monkeypatch.setattr(asyncio, "sleep", spies[0])
    monkeypatch.setattr(time, "sleep", spies[1])
    ctx = make_ctx({})
    await ctx.sleep("nap", 0.01)
    await ctx.sleep("nap", timedelta(milliseconds=10))
    await ctx.sleep("nap", until=datetime.now(UTC) + timedelta(hours=1))
    await ctx.sleep("nap", until="2000-01-01T00:00:00Z")  # past: no wait at all
    delays = spies[0].delays + spies[1].delays  # one of them, by flavour
    assert delays[:2] == [0.01, 0.01]
    assert 3500 < delays[2] <= 3600
    assert delays[3:] == [0]


async def test_without_gateway_wait_is_an_error(make_ctx: MakeCtx) -> None:
    ctx = make_ctx({})
    with pytest.raises(StepProtocolError, match="without the gateway"):
        await ctx.wait("paid", "order.paid", timeout=1)


# --- framework helpers ----------------------------------------------------------------

SUSPENDED = {"suspended": True, "kind": "sleep", "wake_at": WAKE, "step_id": "nap"}


def suspend() -> Suspend:
    return Suspend(SuspendKind.SLEEP, "nap", wire.parse_timestamp(WAKE))


async def test_aiohttp_middleware(aiohttp_client: AiohttpClient, sidecar: Sidecar) -> None:
    async def suspends(request: web.Request) -> web.Response:
        raise suspend()

    async def fine(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, status=201)

    async def waits(request: web.Request) -> web.Response:
        async with StepClient() as client:
            ctx = client.context(request.headers)
            event = await ctx.wait_for_event("paid", "order.paid", timeout="1h")
        return web.json_response({"event": event})

    app = web.Application(middlewares=[aiohttp_middleware])
    app.router.add_get("/suspends", suspends)
    app.router.add_get("/fine", fine)
    app.router.add_get("/waits", waits)
    client = await aiohttp_client(app)
    async with client.get("/suspends") as resp:
        assert resp.status == 202
        assert await resp.json() == SUSPENDED
    async with client.get("/fine") as resp:
        assert (resp.status, await resp.json()) == (201, {"ok": True})
    async with client.get("/waits", headers=sidecar.headers()) as resp:
        assert resp.status == 202
        assert await resp.json() == {
            "suspended": True,
            "kind": "wait",
            "wake_at": None,
            "step_id": "paid",
        }


async def test_starlette_exception_handler() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def suspends(request: Request) -> JSONResponse:
        raise suspend()

    async def fine(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/suspends", suspends), Route("/fine", fine)])
    app.add_exception_handler(Suspend, starlette_exception_handler)
    status, body = await call_asgi(app, "GET", "/suspends", {}, b"")
    assert (status, orjson.loads(body)) == (202, SUSPENDED)
    status, body = await call_asgi(app, "GET", "/fine", {}, b"")
    assert (status, orjson.loads(body)) == (200, {"ok": True})
    # Registered for another exception class by mistake, it does not swallow that one.
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with pytest.raises(KeyError):
        await starlette_exception_handler(request, KeyError("x"))


def test_flask_register() -> None:
    from flask import Flask

    app = Flask(__name__)
    flask_register(app)

    @app.get("/suspends")
    def suspends() -> str:
        raise suspend()

    @app.get("/fine")
    def fine() -> str:
        return "ok"

    client = app.test_client()
    resp = client.get("/suspends")
    assert (resp.status_code, resp.get_json()) == (202, SUSPENDED)
    assert client.get("/fine").get_data(as_text=True) == "ok"
