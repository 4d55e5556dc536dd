"""Failed tries of steps through a real gateway: the runs API shows each step with its
errors, the attempt that completed it and the durations the gateway saw, from the store
(the same after a restart), and keeps a bounded number of errors per run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.store.records import MAX_ERROR_MESSAGE, STEP_ERRORS_KEPT
from tests.conftest import Backend, Gateway, GatewayFactory, HeldBackend, durable_route
from tests.helpers import assert_eventually, counts, run_status

pytestmark = pytest.mark.both_stores

WORK_MS = 40
"""How long each step's function takes in the example backend (`work_ms`)."""


def size(output: Any) -> int:
    """A step output's size as stored: canonical JSON."""
    return len(orjson.dumps(output, option=orjson.OPT_SORT_KEYS))


async def finished(http: aiohttp.ClientSession, gw: Gateway, run_id: str) -> dict[str, Any]:
    """The run's detail once its final writes are committed (they follow the answer)."""

    async def recorded() -> dict[str, Any]:
        detail = await run_status(http, gw, run_id)
        assert detail["finished_at"] is not None
        assert all(a["ended_at"] is not None for a in detail["attempts"])
        assert len(detail["attempts"]) == detail["attempt"]
        return detail

    result: dict[str, Any] = await assert_eventually(recorded)
    return result


def within(seconds_from: float, seconds_to: float) -> tuple[float, float]:
    """The bounds, in ms, of a duration measured between two recorded times."""
    return WORK_MS * 0.9, (seconds_to - seconds_from) * 1000 + 0.01


async def test_a_failed_try_is_shown_with_the_attempt_that_completed_the_step(
    gateway_factory: GatewayFactory, backend: Backend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry="{initial_backoff: 10ms}"))
    async with http.post(gw.url(f"/demo/steps?n=3&raise_at=2&work_ms={WORK_MS}")) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        run_id = resp.headers["Durable-Run-Id"]
    assert body["attempt"] == 2
    assert await counts(http, backend, run_id) == {"step-1": 1, "step-2": 2, "step-3": 1}

    detail = await finished(http, gw, run_id)
    first, second = detail["attempts"]
    assert (first["status"], second["status"]) == (500, 200)
    step1, step2, step3 = detail["steps"]
    assert [s["step_id"] for s in (step1, step2, step3)] == ["step-1", "step-2", "step-3"]
    assert all(s["completed"] for s in detail["steps"])
    assert [s["attempt"] for s in detail["steps"]] == [1, 2, 2]
    assert [s["output_bytes"] for s in detail["steps"]] == [size(r) for r in body["results"]]
    assert step1["errors"] == step3["errors"] == []
    [error] = step2["errors"]
    assert (error["attempt"], error["message"]) == (1, "step-2 failed on attempt 1")
    assert first["started_at"] <= error["created_at"] <= first["ended_at"]
    assert detail["step_errors_dropped"] == 0

    # A completed step's duration is what the backend reported (the reference client
    # times each step); a failed try's runs from the attempt's previous record (or its
    # start) to this one. Either is at least the step's work, at most the time since
    # that previous record.
    timed = [
        (step1, first["started_at"]),
        (error, step1["created_at"]),
        (step2, second["started_at"]),  # step-1 came back memoized: nothing in between
        (step3, step2["created_at"]),
    ]
    for record, since in timed:
        low, high = within(since, record["created_at"])
        assert low <= record["duration_ms"] <= high, (record, since)
        assert record["timing"] == ("gateway" if record is error else "backend")
    assert (
        step1["duration_ms"] + error["duration_ms"]
        <= (first["ended_at"] - first["started_at"]) * 1000 + 0.01
    )

    # It all comes from the store: a new process shows the same.
    gw.restart()
    assert await run_status(http, gw, run_id) == detail


async def test_a_step_that_never_completed_is_listed_with_its_errors(
    gateway_factory: GatewayFactory, backend: Backend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, retry="{max_attempts: 2, initial_backoff: 10ms}")
    )
    async with http.post(gw.url("/demo/steps?n=3&raise_at=2&fail_times=9")) as resp:
        assert resp.status == 500
        run_id = resp.headers["Durable-Run-Id"]

    detail = await finished(http, gw, run_id)
    assert detail["status"] == "failed"
    assert [(s["step_id"], s["completed"]) for s in detail["steps"]] == [
        ("step-1", True),
        ("step-2", False),
    ]
    step2 = detail["steps"][1]
    assert (step2["attempt"], step2["created_at"], step2["output_bytes"]) == (None, None, None)
    assert [(e["attempt"], e["message"]) for e in step2["errors"]] == [
        (1, "step-2 failed on attempt 1"),
        (2, "step-2 failed on attempt 2"),
    ]
    for error, attempt in zip(step2["errors"], detail["attempts"], strict=True):
        assert attempt["started_at"] <= error["created_at"] <= attempt["ended_at"]
        assert error["duration_ms"] >= 0 and error["timing"] == "gateway"


async def test_a_backend_looping_on_errors_keeps_the_first_ones_and_a_count(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(held.url))
    request = asyncio.ensure_future(http.post(gw.url("/demo/x"), data=b"{}"))
    headers = await asyncio.wait_for(held.attempts.get(), 10)
    base = headers["Durable-Sidecar"]
    auth = {"Authorization": "Bearer " + headers["Durable-Token"]}
    extra = 7
    for n in range(STEP_ERRORS_KEPT + extra):
        message = "é" * (MAX_ERROR_MESSAGE + 500) if n == 0 else f"try {n}"
        error = {"error": {"message": message}}
        async with http.put(f"{base}/steps/flaky", json=error, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200
        run_id = resp.headers["Durable-Run-Id"]

    detail = await finished(http, gw, run_id)
    [step] = detail["steps"]
    assert (step["step_id"], step["completed"]) == ("flaky", False)
    messages = [e["message"] for e in step["errors"]]
    assert messages[0] == "é" * MAX_ERROR_MESSAGE
    assert messages[1:] == [f"try {n}" for n in range(1, STEP_ERRORS_KEPT)]
    assert detail["step_errors_dropped"] == extra
    # A finished run takes no more: it is over (409), or gone from memory already (404).
    async with http.put(f"{base}/steps/flaky", json=error, headers=auth) as resp:
        assert resp.status in (404, 409)
