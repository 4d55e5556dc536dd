"""Step timing from backends through a real gateway: `started_at` and `duration_ms` on a
step's PUT are stored and shown by the runs API; bad values are a 400 and store nothing.
The runs API also names the run's trace, and links it when `tracing.ui_url` is set.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.engine.traces import trace_of
from step_protocol import wire
from tests.conftest import Gateway, GatewayFactory, HeldBackend, durable_route
from tests.helpers import assert_eventually, until_status

DAY = 86400
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UI_URL = "https://jaeger.example/trace/{trace_id}"


async def _run(
    gateway_factory: GatewayFactory,
    held: HeldBackend,
    http: aiohttp.ClientSession,
    *,
    extra_yaml: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[str, dict[str, str], asyncio.Future[aiohttp.ClientResponse], Gateway]:
    """A run held in its first attempt: its sidecar base URL, the JSON headers its
    backend writes steps with, the client's pending request and the gateway."""
    gw = gateway_factory(durable_route(held.url, retry="{max_attempts: 1}"), extra_yaml=extra_yaml)
    request = asyncio.ensure_future(
        http.post(gw.url("/demo/x"), data=b"{}", headers=headers, allow_redirects=False)
    )
    attempt = await asyncio.wait_for(held.attempts.get(), 10)
    auth = {
        "Authorization": "Bearer " + attempt["Durable-Token"],
        "Content-Type": "application/json",
    }
    return attempt["Durable-Sidecar"], auth, request, gw


async def _put(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], body: bytes
) -> tuple[int, str, dict[str, Any]]:
    async with http.put(url, data=body, headers=auth) as resp:
        return resp.status, resp.content_type, orjson.loads(await resp.read())


async def _finish(
    held: HeldBackend, request: asyncio.Future[aiohttp.ClientResponse]
) -> tuple[str, int]:
    await held.answers.put(200)
    async with await request as resp:
        return resp.headers["Durable-Run-Id"], resp.status


async def _stored(
    http: aiohttp.ClientSession, gw: Gateway, run_id: str, steps: int
) -> dict[str, Any]:
    """The run's detail once its `steps` completed steps and its end are committed (async
    durability lets the rows trail the run's live status)."""

    async def committed() -> dict[str, Any]:
        detail = await until_status(http, gw, run_id, "succeeded")
        assert sum(s["completed"] for s in detail["steps"]) == steps, detail["steps"]
        assert detail["finished_at"] is not None and len(detail["attempts"]) == 1
        return detail

    detail: dict[str, Any] = await assert_eventually(committed)
    return detail


@pytest.mark.both_stores
async def test_a_backends_step_timing_and_the_runs_trace_show_in_the_runs_api(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    traceparent = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
    base, auth, request, gw = await _run(
        gateway_factory,
        held,
        http,
        extra_yaml=f'tracing:\n  ui_url: "{UI_URL}"\n',
        headers={"traceparent": traceparent},
    )
    now = time.time()
    # RFC 3339 with milliseconds and `Z`, as the reference client sends it.
    text = wire.format_timestamp(now - 2.5)
    puts = {
        "seconds": {"output": 1, "started_at": now - 3.25, "duration_ms": 1500.5},
        "rfc3339": {"output": 2, "started_at": text, "duration_ms": 12},
        "start-only": {"output": 3, "started_at": now - 1},
        "took-only": {"output": 4, "duration_ms": 0},
        "none": {"output": 5, "started_at": None, "duration_ms": None},
        # At the bounds: 30 days of work, begun almost 30 days ago or just ahead of now.
        "oldest": {"output": 6, "started_at": now - 30 * DAY + 60, "duration_ms": 30 * DAY * 1000},
        "ahead": {"output": 7, "started_at": now + 240},
    }
    for step_id, body in puts.items():
        status, _, answer = await _put(http, f"{base}/steps/{step_id}", auth, orjson.dumps(body))
        assert (status, answer) == (201, {"created": True}), step_id
    error = {"error": {"message": "flaky"}, "started_at": now - 1, "duration_ms": 5}
    status, _, answer = await _put(http, f"{base}/steps/failed", auth, orjson.dumps(error))
    assert (status, answer) == (200, {"recorded": "error"})
    run_id, final = await _finish(held, request)
    assert final == 200

    detail = await _stored(http, gw, run_id, len(puts))

    shown = {
        s["step_id"]: (s["started_at"], s["duration_ms"], s["timing"]) for s in detail["steps"]
    }
    rfc3339 = datetime.fromisoformat(text).timestamp()
    assert shown["seconds"] == (now - 3.25, 1500.5, "backend")
    assert shown["rfc3339"] == (rfc3339, 12.0, "backend")
    assert shown["took-only"] == (None, 0.0, "backend")
    assert shown["oldest"] == (now - 30 * DAY + 60, 30 * DAY * 1000, "backend")
    # No duration reported: the one the gateway saw stands.
    for step_id, started in (("start-only", now - 1), ("none", None), ("ahead", now + 240)):
        assert shown[step_id][0] == started, step_id
        assert shown[step_id][2] == "gateway", step_id
    assert shown["failed"] == (None, None, None)  # only failed: no completion to time
    assert [e["message"] for e in detail["steps"][-1]["errors"]] == ["flaky"]
    # The trace is the client's, linked through the configured viewer.
    assert detail["trace_id"] == CLIENT_TRACE
    assert detail["trace_url"] == f"https://jaeger.example/trace/{CLIENT_TRACE}"

    # The same from the store alone, after a restart.
    gw.restart()
    again = await _stored(http, gw, run_id, len(puts))
    assert (again["steps"], again["trace_id"], again["trace_url"]) == (
        detail["steps"],
        detail["trace_id"],
        detail["trace_url"],
    )


def _bad(field: str, value: Any, error: bool = False) -> tuple[str, bytes]:
    kind: dict[str, Any] = {"error": {"message": "x"}} if error else {"output": 1}
    return field, orjson.dumps({**kind, field: value})


def _bad_bodies(now: float) -> list[tuple[str, bytes]]:
    """(the field the 400 must name, body) for each refused timing."""
    return [
        _bad("started_at", "yesterday"),
        _bad("started_at", "NaN"),
        _bad("started_at", "Infinity"),
        _bad("started_at", "2026-12-05T01:02:03"),  # no offset
        _bad("started_at", "2026-12-05T01:02:03Z" + " " * 64),
        _bad("started_at", wire.format_timestamp(now - 31 * DAY)),
        _bad("started_at", now - 31 * DAY),
        _bad("started_at", now + 3600),
        _bad("started_at", 0),
        _bad("started_at", -1e308),
        _bad("started_at", 1e308),
        _bad("started_at", True),
        _bad("started_at", [now]),
        _bad("started_at", {"s": now}),
        _bad("started_at", now * 1000),  # milliseconds, not seconds
        _bad("duration_ms", -1),
        _bad("duration_ms", -0.001),
        _bad("duration_ms", 30 * DAY * 1000 + 1),
        _bad("duration_ms", 1e308),
        _bad("duration_ms", "12"),
        _bad("duration_ms", "NaN"),
        _bad("duration_ms", False),
        _bad("duration_ms", [1]),
        _bad("started_at", now + 3600, error=True),
        _bad("duration_ms", -5, error=True),
    ]


# Not JSON at all (orjson refuses them): a 400 that cannot name the field.
NOT_JSON = [
    b'{"output": 1, "started_at": NaN}',
    b'{"output": 1, "duration_ms": Infinity}',
    b'{"output": 1, "duration_ms": 1e400}',
]


async def test_bad_step_timing_is_refused_and_stores_nothing(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, auth, request, gw = await _run(gateway_factory, held, http)
    wrong: list[str] = []
    bodies = [*_bad_bodies(time.time()), *(("", body) for body in NOT_JSON)]
    for i, (field, body) in enumerate(bodies):
        url = f"{base}/steps/s{i}"
        status, kind, problem = await _put(http, url, auth, body)
        if (status, kind) != (400, "application/problem+json") or field not in problem["detail"]:
            wrong.append(f"{body!r}: {status} {kind} {problem}")
            continue
        # Had the bad write stored the step, this one would find it (200, not created).
        status, _, answer = await _put(http, url, auth, b'{"output": 1}')
        if (status, answer) != (201, {"created": True}):
            wrong.append(f"{body!r}, then a good write: {status} {answer}")
    assert not wrong, "\n".join(wrong)
    run_id, final = await _finish(held, request)
    assert final == 200

    detail = await _stored(http, gw, run_id, len(bodies))

    # No refused write left a failed try behind either, and none left a timing.
    assert all(s["errors"] == [] for s in detail["steps"])
    assert all(s["started_at"] is None and s["timing"] == "gateway" for s in detail["steps"])
    # No traceparent sent: the run's trace is the one its stored request gives (the
    # headers the runs API shows; traceparent is never redacted); no viewer set.
    stored = [(name, value) for name, value in detail["request"]["headers"]]
    assert detail["trace_id"] == trace_of(run_id, stored).trace_id
    assert detail["trace_url"] is None
