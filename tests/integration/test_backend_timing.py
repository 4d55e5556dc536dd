"""Step timing end to end: the example backends (the reference Python client and the Node
one) time each step's work, and the runs API shows what they reported (SPEC.md §4.3).

What the backends send is checked byte for byte against a recording sidecar in
tests/unit/test_client.py; this checks that the gateway keeps and shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route, start_backend
from tests.helpers import assert_eventually, run_status

pytestmark = pytest.mark.both_stores

WORK_MS = 40
"""How long each step's function takes in the example backends (`work_ms`)."""
CLOCKS = 0.002
"""Seconds of slack between the gateway's and the backend's readings of the one clock
(Node's wall clock counts whole milliseconds)."""


@pytest.fixture(params=["python", "node"])
def timed_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = start_backend(request.param, tmp_path)
    yield b
    b.proc.stop()


async def test_the_runs_api_shows_the_timing_each_backend_reported(
    gateway_factory: GatewayFactory, timed_backend: Backend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(timed_backend.url, retry="{initial_backoff: 10ms}"))
    async with http.post(gw.url(f"/demo/steps?n=3&raise_at=2&work_ms={WORK_MS}")) as resp:
        assert resp.status == 200, await resp.text()
        run_id = resp.headers["Durable-Run-Id"]

    async def recorded() -> dict[str, Any]:
        """The run once its writes are committed (they follow the answer)."""
        detail = await run_status(http, gw, run_id)
        assert detail["finished_at"] is not None
        assert [a["ended_at"] is not None for a in detail["attempts"]] == [True, True]
        assert [s["completed"] for s in detail["steps"]] == [True, True, True]
        return detail

    detail: dict[str, Any] = await assert_eventually(recorded)
    attempts = {a["attempt"]: a for a in detail["attempts"]}
    steps = detail["steps"]
    assert [(s["step_id"], s["attempt"]) for s in steps] == [
        ("step-1", 1),
        ("step-2", 2),
        ("step-3", 2),
    ]
    for step in steps:
        started_at, took = step["started_at"], step["duration_ms"]
        assert started_at is not None and took is not None, step
        # The work ran inside its attempt and before the gateway recorded its PUT.
        assert attempts[step["attempt"]]["started_at"] - CLOCKS <= started_at
        assert started_at + took / 1000 <= step["created_at"] + CLOCKS
        assert took >= WORK_MS - 1  # a Node timer may fire up to 1 ms early
    # step-2 began on attempt 2 once step-1 came back memoized; step-3 after step-2's work.
    step2_end = steps[1]["started_at"] + steps[1]["duration_ms"] / 1000
    assert step2_end <= steps[2]["started_at"] + CLOCKS
