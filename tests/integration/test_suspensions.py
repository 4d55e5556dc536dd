"""Durable sleep and wait-for-event: suspend, wake on time or on a matching event, resume."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time

import aiohttp
import pytest

from gateway.engine.waits import TEST_CRASH_ENV
from tests.conftest import Backend, Gateway, GatewayFactory, durable_route
from tests.helpers import (
    accept,
    assert_eventually,
    counts,
    final,
    post_event,
    run_status,
    until_status,
)

pytestmark = pytest.mark.both_stores


async def until_committed_suspended(http: aiohttp.ClientSession, gw: Gateway, run_id: str) -> None:
    """Suspended and out of memory: a run leaves memory only once its suspension commits,
    so a kill from here on cannot make the next start re-run its attempt."""
    await until_status(http, gw, run_id, "suspended")

    async def left_memory() -> None:
        async with http.get(gw.admin + "/metrics") as resp:
            assert "durable_runs_in_flight 0.0" in await resp.text()

    await assert_eventually(left_memory)


async def test_sleep_holds_the_client_and_resumes_after_the_delay(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, hold="10s"))
    began = time.monotonic()
    async with http.post(gw.url("/demo/sleep?seconds=1&n=2")) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert time.monotonic() - began >= 1.0
    assert body["attempt"] == 2
    assert await counts(http, backend, body["run_id"]) == {"step-1": 1, "step-2": 1}


async def test_sleep_survives_a_gateway_restart(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    run_id, location = await accept(http, gw.url("/demo/sleep?seconds=2&n=2"))
    await until_committed_suspended(http, gw, run_id)
    gw.kill()
    gw.launch()
    status, body = await final(http, location)
    assert status == 200 and body["run_id"] == run_id and body["attempt"] == 2
    assert await counts(http, backend, run_id) == {"step-1": 1, "step-2": 1}


async def test_wait_resumes_on_a_matching_event_only(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    run_id, location = await accept(http, gw.url("/demo/wait?event=order.paid&order_id=42"))
    await until_committed_suspended(http, gw, run_id)  # its wait is in the store, too
    detail = await run_status(http, gw, run_id)
    assert detail["suspension"]["kind"] == "wait" and detail["suspension"]["event"] == "order.paid"
    other = await post_event(http, gw, name="order.paid", data={"order_id": "41"})
    assert other["matched"] == 0
    wrong_name = await post_event(http, gw, name="order.shipped", data={"order_id": "42"})
    assert wrong_name["matched"] == 0
    assert (await run_status(http, gw, run_id))["status"] == "suspended"
    paid = await post_event(
        http, gw, name="order.paid", data={"order_id": "42", "total": 7}, id="evt-1"
    )
    assert paid == {"id": "evt-1", "matched": 1}
    status, body = await final(http, location)
    assert status == 200
    assert body["event"]["data"] == {"order_id": "42", "total": 7}
    assert body["event"]["id"] == "evt-1" and body["event"]["name"] == "order.paid"
    assert await counts(http, backend, run_id) == {"step-1": 1, "step-2": 1}


async def test_wait_times_out_with_a_null_event(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    _, location = await accept(http, gw.url("/demo/wait?event=never&order_id=1&timeout=1"))
    status, body = await final(http, location)
    assert status == 200 and body["event"] is None


async def test_event_ids_deduplicate(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    first = await post_event(http, gw, name="ping", data={}, id="same")
    again = await post_event(http, gw, name="ping", data={}, id="same")
    assert first == {"id": "same", "matched": 0}
    assert again == {"id": "same", "duplicate": True, "matched": 0}


async def test_an_event_wakes_every_run_it_matches_and_no_other(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    runs = {
        order: await accept(http, gw.url(f"/demo/wait?event=order.paid&order_id={order}"))
        for order in ("7", "7 again", "8")
    }
    anyone, anyone_at = await accept(http, gw.url("/demo/wait?event=order.paid"))
    for run_id, _ in [*runs.values(), (anyone, anyone_at)]:
        await until_status(http, gw, run_id, "suspended")

    seven = await post_event(http, gw, name="order.paid", data={"order_id": "7"}, id="p7")

    assert seven == {"id": "p7", "matched": 2}  # order 7 and the wait without a match
    for run_id, location in (runs["7"], (anyone, anyone_at)):
        status, body = await final(http, location)
        assert status == 200 and body["event"]["id"] == "p7", run_id
    for order in ("7 again", "8"):
        assert (await run_status(http, gw, runs[order][0]))["status"] == "suspended"


async def test_events_are_checked_before_they_are_stored(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    refused = [
        ({"name": "n" * 257}, 400),
        ({"name": ""}, 400),
        ({"name": "ok", "data": [1]}, 400),
        ({"name": "ok", "id": "i" * 256}, 400),
        ({"name": "ok", "id": 7}, 400),
        ({"name": "ok", "data": {"blob": "x" * 1024 * 1024}}, 413),
    ]
    for event, status in refused:
        body = io.BytesIO(json.dumps(event).encode())  # large bodies as a stream
        async with http.post(f"{gw.admin}/v1/events", data=body) as resp:
            assert resp.status == status, (event, await resp.text())
            assert resp.content_type == "application/problem+json"
    accepted = await post_event(http, gw, name="n" * 256, id="i" * 255)
    assert accepted == {"id": "i" * 255, "matched": 0}
    async with http.get(gw.admin + "/metrics") as resp:
        assert 'durable_events_total{result="received"} 1.0' in await resp.text()


async def test_an_event_stored_before_a_crash_has_woken_its_run(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # The fault point kills the gateway as soon as the event's transaction commits:
    # the sender gets no answer, the engine hears of nothing.
    gw = gateway_factory(durable_route(backend.url), env={TEST_CRASH_ENV: "1"})
    run_id, location = await accept(http, gw.url("/demo/wait?event=order.paid&order_id=42"))
    await until_committed_suspended(http, gw, run_id)
    with pytest.raises(aiohttp.ClientError):
        await post_event(http, gw, name="order.paid", data={"order_id": "42"}, id="evt-1")
    assert gw.proc.popen.wait(15) == -signal.SIGKILL

    gw.env = None
    gw.restart()
    # The sender retries: a duplicate, and the run it woke is not left waiting.
    again = await post_event(http, gw, name="order.paid", data={"order_id": "42"}, id="evt-1")
    assert again == {"id": "evt-1", "duplicate": True, "matched": 0}
    status, body = await final(http, location)
    assert status == 200 and body["event"]["id"] == "evt-1"
    assert await counts(http, backend, run_id) == {"step-1": 1, "step-2": 1}


async def test_cancel_drops_the_timer(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    run_id, location = await accept(http, gw.url("/demo/sleep?seconds=3600&n=2"))
    await until_status(http, gw, run_id, "suspended")
    async with http.post(f"{gw.admin}/v1/runs/{run_id}/cancel") as resp:
        assert resp.status == 200
    async with http.get(location) as resp:
        assert resp.status == 409
        assert resp.content_type == "application/problem+json"
    detail = await run_status(http, gw, run_id)
    assert detail["status"] == "cancelled" and detail["suspension"] is None
    async with http.post(f"{gw.admin}/v1/runs/{run_id}/cancel") as resp:
        assert resp.status == 409  # already finished
    async with http.get(gw.admin + "/metrics") as resp:
        assert 'durable_runs_suspended{kind="sleep"} 0.0' in await resp.text()


async def test_retry_of_a_failed_run_reuses_its_steps(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, retry="{max_attempts: 2, initial_backoff: 10ms}")
    )
    async with http.post(gw.url("/demo/steps?n=3&fail_at=3&fail_times=2")) as resp:
        assert resp.status == 500
        run_id = resp.headers["Durable-Run-Id"]
    await until_status(http, gw, run_id, "failed")
    async with http.post(f"{gw.admin}/v1/runs/{run_id}/retry") as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(f"{gw.ingress}/_durable/runs/{run_id}") as resp:
        assert resp.status == 404  # the status URL needs its token; the admin API does not
    detail = await until_status(http, gw, run_id, "succeeded")
    assert detail["attempt"] == 3 and detail["response"]["status"] == 200
    assert await counts(http, backend, run_id) == {"step-1": 1, "step-2": 1, "step-3": 1}


async def test_a_thousand_sleeping_runs_live_in_the_store_and_all_wake(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    limit = asyncio.Semaphore(64)

    async def one(i: int) -> tuple[str, str]:
        async with limit:
            return await accept(http, gw.url(f"/demo/sleep?seconds=4&n=1&i={i}"))

    began = time.monotonic()
    accepted = await asyncio.gather(*(one(i) for i in range(1000)))

    async def all_suspended() -> str:
        async with http.get(gw.admin + "/metrics") as resp:
            text = await resp.text()
        assert 'durable_runs_suspended{kind="sleep"} 1000.0' in text
        # Nothing per timer in the process: no run is held in memory while they sleep.
        # (Checked in the same scrape, eventually: a run leaves memory a moment after its
        # suspension commits, once it has looked for an event that came meanwhile.)
        assert "durable_runs_in_flight 0.0" in text
        return text

    await assert_eventually(all_suspended, within=30)
    limit_poll = asyncio.Semaphore(64)

    async def woke(location: str) -> int:
        async with limit_poll:
            status, _ = await final(http, location, within=60)
            return int(status)

    statuses = await asyncio.gather(*(woke(location) for _, location in accepted))
    assert statuses == [200] * 1000
    print(f"\n1000 sleeping runs (4 s each) all answered after {time.monotonic() - began:.1f}s")


async def test_on_exhausted_pause_waits_for_an_operator(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    retry = "{max_attempts: 2, initial_backoff: 10ms}"
    gw = gateway_factory(durable_route(backend.url, retry=retry, on_exhausted="pause"))
    run_id, location = await accept(http, gw.url("/demo/steps?n=2&fail_at=2&fail_times=2"))
    await until_status(http, gw, run_id, "paused")
    async with http.get(location, headers={"Prefer": "wait=1"}) as resp:
        assert resp.status == 202  # no final answer while paused
    async with http.post(f"{gw.admin}/v1/runs/{run_id}/retry") as resp:
        assert resp.status == 200, await resp.text()
    status, body = await final(http, location)
    assert status == 200 and body["attempt"] == 3
    assert await counts(http, backend, run_id) == {"step-1": 1, "step-2": 1}
