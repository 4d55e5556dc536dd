"""Retry budgets and circuit breakers keep a failing upstream's load down, and lose no run.

A real gateway process in front of a backend on a real socket that counts what it
receives (first attempts and retries apart) and fails until the test heals it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.tasks import spawn
from tests.conftest import Gateway, GatewayFactory, catch_all, durable_route
from tests.helpers import accept, assert_eventually, final, get_json, run_status


@dataclass
class Counting:
    """Answers every attempt with `status`; counts first attempts and retries."""

    status: int = 500
    firsts: int = 0
    retries: int = 0
    seen: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Durable-Attempt") == "1":
            self.firsts += 1
        else:
            self.retries += 1
        self.seen.append(request.headers.get("Durable-Run-Id", ""))
        return web.json_response({"status": self.status}, status=self.status)

    @property
    def hits(self) -> int:
        return self.firsts + self.retries


@pytest.fixture
async def counting() -> AsyncIterator[Counting]:
    backend = Counting()
    async with catch_all(backend.handle) as backend.url:
        yield backend


async def sample(http: aiohttp.ClientSession, gw: Gateway, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics; 0 when it is not there (yet)."""
    async with http.get(gw.admin + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


async def backoff_runs(http: aiohttp.ClientSession, gw: Gateway) -> list[dict[str, Any]]:
    body = await get_json(http, f"{gw.admin}/v1/runs?route=demo&status=backoff&limit=500")
    runs: list[dict[str, Any]] = body["runs"]
    return runs


RUNS = 50
BUDGET_ROUTE = {
    # Fast backoffs and many attempts: without a budget each run would retry 9 times.
    "retry": "{max_attempts: 10, initial_backoff: 20ms, max_backoff: 50ms,"
    " budget: {ratio: 0.2, min_per_second: 0, interval: 4s}}",
}


async def test_a_budget_holds_retries_to_its_ratio_and_keeps_the_runs(
    counting: Counting, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(counting.url, **BUDGET_ROUTE))
    accepted = await asyncio.gather(*(accept(http, gw.url(f"/demo/{i}")) for i in range(RUNS)))

    async def all_waiting_for_the_budget() -> None:
        waiting = await sample(http, gw, "durable_retry_budget_waiting", route="demo")
        assert waiting == RUNS, (waiting, counting.firsts, counting.retries)

    await assert_eventually(all_waiting_for_the_budget)
    # 20% of 50 first attempts; the window slides, but with no new first attempts
    # there is no new room: a little slack only for the order they were counted in.
    assert counting.firsts == RUNS
    assert 10 <= counting.retries <= 12, counting.retries
    deferred = await sample(http, gw, "durable_retry_budget_deferred_total", route="demo")
    assert deferred >= RUNS
    # Every run is kept, waiting: none failed, none is lost.
    stored = await backoff_runs(http, gw)
    assert len(stored) == RUNS
    detail = await run_status(http, gw, accepted[0][0])
    assert detail["status"] == "backoff" and detail["response"] is None
    assert detail["waiting"]["reason"] == "retry_budget"
    assert detail["waiting"]["until"] == detail["wake_at"] > time.time() - 1
    retries_then = counting.retries

    # The backend recovers; new requests (answered at their first attempt) make room
    # for the waiting retries, one for every five of them.
    counting.status = 200

    async def traffic() -> None:
        while True:
            async with http.post(gw.url("/demo/fresh")) as resp:
                assert resp.status == 200

    senders = [spawn(traffic(), name=f"traffic-{i}") for i in range(8)]
    try:
        results = await asyncio.gather(*(final(http, url, within=45) for _, url in accepted))
    finally:
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    assert [status for status, _ in results] == [200] * RUNS
    assert counting.retries == retries_then + RUNS  # then each waiting one went, once


BREAKER_ROUTE = {
    "retry": "{max_attempts: 30, initial_backoff: 20ms, max_backoff: 50ms, budget: off}",
    "circuit_breaker": "{failures: 3, interval: 1s}",
}


async def test_a_breaker_opens_lets_one_probe_through_per_interval_and_closes(
    counting: Counting, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(counting.url, **BREAKER_ROUTE))
    upstream = counting.url
    run_id, url = await accept(http, gw.url("/demo/first"))

    async def opened() -> None:
        assert await sample(http, gw, "durable_circuit_state", upstream=upstream) in (1, 2)

    await assert_eventually(opened)
    # Three failures in a row opened it; a probe may have gone since, if this was slow.
    assert counting.hits in (3, 4), counting.hits
    assert await sample(http, gw, "durable_circuit_open_total", upstream=upstream) == 1
    began, hits_then = time.monotonic(), counting.hits

    # New requests while it is open: their first attempts are held, not sent.
    later = [await accept(http, gw.url(f"/demo/later-{i}")) for i in range(5)]

    async def held() -> None:
        assert await sample(http, gw, "durable_circuit_held", upstream=upstream) >= 5

    await assert_eventually(held)
    shown = await run_status(http, gw, later[0][0])
    assert shown["status"] in ("running", "backoff") and shown["response"] is None
    if shown["waiting"] is not None:  # unless it is the probe in flight just now
        assert shown["waiting"]["reason"] == "circuit_open"
        assert shown["waiting"]["until"] is not None

    # A client that will not wait past a second gets the usual 303 to its result.
    async with http.post(
        gw.url("/demo/impatient"), headers={"Prefer": "wait=1"}, allow_redirects=False
    ) as resp:
        assert resp.status == 303, await resp.text()

    async def probed_twice() -> None:
        assert counting.hits >= hits_then + 2

    await assert_eventually(probed_twice)
    # One probe per interval (1 s), whatever is held: the upstream sees no more.
    elapsed = time.monotonic() - began
    assert counting.hits - hits_then <= elapsed / 1.0 + 1, (counting.hits, elapsed)

    counting.status = 200
    results = await asyncio.gather(*(final(http, u, within=30) for _, u in [(run_id, url), *later]))
    assert [status for status, _ in results] == [200] * 6
    assert await sample(http, gw, "durable_circuit_state", upstream=upstream) == 0
    logs = gw.logs()
    assert logs.count("opened after 3 failures in a row") == 1, logs
    assert logs.count("closed: a probe succeeded") == 1, logs


async def test_runs_waiting_for_the_budget_survive_a_kill(
    counting: Counting, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(counting.url, **BUDGET_ROUTE))
    accepted = [await accept(http, gw.url(f"/demo/{i}")) for i in range(10)]

    async def all_waiting() -> None:
        stored = await backoff_runs(http, gw)
        assert len(stored) == 10
        assert await sample(http, gw, "durable_retry_budget_waiting", route="demo") == 10

    await assert_eventually(all_waiting)
    assert counting.retries <= 3  # a fifth of ten first attempts, and a little slack
    gw.kill()
    counting.status = 200
    gw.restart()  # a restarted node resumes them at their stored (stretched) wake time
    results = [await final(http, url) for _, url in accepted]
    assert [status for status, _ in results] == [200] * 10
