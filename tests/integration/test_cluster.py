"""Several gateway processes on one PostgreSQL database: any node serves everything, a dead
node's runs move, a silent node is fenced, wake-ups and timers cross nodes."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.tasks import spawn
from tests.conftest import Backend, ClusterFactory, Gateway, durable_route
from tests.helpers import accept, all_counts, assert_eventually, final, get_json, post_event


def on(gw: Gateway, location: str, origin: Gateway) -> str:
    """A result URL handed out by `origin`, asked of `gw` instead."""
    return location.replace(origin.ingress, gw.ingress)


async def owner_of(http: aiohttp.ClientSession, gw: Gateway, run_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = await get_json(http, f"{gw.admin}/v1/runs/{run_id}")
    return detail


async def test_any_node_answers_a_run_another_node_drives(
    sync_backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    a, b = cluster_factory(durable_route(sync_backend.url))
    run_id, location = await accept(http, a.url("/demo/steps?n=2&pause_ms=300"))
    status, body = await final(http, on(b, location, a), within=30)  # long-polled on b
    assert (status, body["run_id"]) == (200, run_id)
    assert (await final(http, location))[1] == body
    for gw in (a, b):  # runs API on any node
        assert (await owner_of(http, gw, run_id))["status"] == "succeeded"


async def test_kill_9_of_the_owner_mid_attempt_moves_its_run(
    sync_backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    """The run resumes on the other node well before the lease would expire, and no step
    acknowledged before the kill runs again."""
    a, b = cluster_factory(durable_route(sync_backend.url), lease="30s", storage="durability: sync")
    run_id, location = await accept(http, a.url("/demo/steps?n=3&pause_ms=1500"))

    async def past_step_1() -> None:
        steps = [s["step_id"] for s in (await owner_of(http, b, run_id))["steps"]]
        assert "step-1" in steps

    await assert_eventually(past_step_1)
    a.kill()
    killed = time.monotonic()

    assert (await owner_of(http, b, run_id))["owner"].startswith("node-1:")  # a drives it

    async def resumed_on_b() -> None:
        detail = await owner_of(http, b, run_id)
        assert detail["attempt"] >= 2 and detail["owner"].startswith("node-2:"), detail

    await assert_eventually(resumed_on_b, within=5.0)  # the contract: within 5 s
    took = time.monotonic() - killed
    status, body = await final(http, on(b, location, a), within=30)
    assert status == 200 and body["attempt"] >= 2
    assert (await all_counts(http, sync_backend))[run_id]["step-1"] == 1
    async with http.get(sync_backend.url + "/_violations") as resp:
        assert (await resp.json())["violations"] == []
    assert "taking over a run (node gone)" in b.logs(), f"took {took:.1f}s"


async def test_an_event_posted_on_one_node_wakes_a_run_waiting_on_another(
    backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    a, b = cluster_factory(durable_route(backend.url))
    run_id, location = await accept(http, a.url("/demo/wait?event=order.paid&order_id=7"))

    async def suspended() -> None:
        assert (await owner_of(http, b, run_id))["status"] == "suspended"

    await assert_eventually(suspended)
    await post_event(http, b, name="order.paid", data={"order_id": "7"})
    status, body = await final(http, on(b, location, a), within=15)
    assert status == 200 and body["event"]["data"] == {"order_id": "7"}


async def test_cancel_on_one_node_stops_the_attempt_on_another(
    backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    a, b = cluster_factory(durable_route(backend.url))
    run_id, location = await accept(http, a.url("/demo/steps?n=1&mode=hang&fail_at=1"))

    async def in_attempt() -> None:
        assert (await owner_of(http, b, run_id))["status"] == "running"

    await assert_eventually(in_attempt)
    async with http.post(f"{b.admin}/v1/runs/{run_id}/cancel") as resp:
        assert resp.status == 200, await resp.text()
    status, body = await final(http, location, within=10)  # a answers: its attempt stopped
    assert status == 409 and body["type"].endswith("run-cancelled")

    async def stopped_on_a() -> None:
        assert "cancelled on another node" in a.logs()

    await assert_eventually(stopped_on_a)


async def test_timers_fire_once_across_the_cluster(
    sync_backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    nodes = cluster_factory(durable_route(sync_backend.url, hold="0s"), nodes=3)
    accepted = await asyncio.gather(
        *(accept(http, nodes[i % 3].url(f"/demo/sleep?seconds=1&n=2&i={i}")) for i in range(30))
    )
    finals = await asyncio.gather(*(final(http, loc, within=60) for _, loc in accepted))
    assert all(status == 200 for status, _ in finals)
    counts = await all_counts(http, sync_backend)
    for run_id, _ in accepted:
        assert counts[run_id]["step-2"] == 1, counts[run_id]


async def test_three_nodes_start_at_once_on_an_empty_database(
    backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    nodes = cluster_factory(durable_route(backend.url), nodes=3)
    for gw in nodes:
        status, _ = await final(http, (await accept(http, gw.url("/demo/steps?n=1")))[1])
        assert status == 200
    applied = [gw for gw in nodes if "applied schema migrations" in gw.logs()]
    assert len(applied) == 1  # one node migrated; the others found it done


async def test_sigstop_past_the_lease_then_sigcont_finishes_nothing_twice(
    sync_backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    a, b = cluster_factory(durable_route(sync_backend.url), lease="2s", storage="durability: sync")
    run_id, location = await accept(http, a.url("/demo/steps?n=3&pause_ms=1000"))

    async def past_step_1() -> None:
        steps = [s["step_id"] for s in (await owner_of(http, b, run_id))["steps"]]
        assert "step-1" in steps

    await assert_eventually(past_step_1)
    a.proc.popen.send_signal(signal.SIGSTOP)
    try:
        status, body = await final(http, on(b, location, a), within=30)
        assert status == 200
        finished = (await owner_of(http, b, run_id))["finished_at"]
    finally:
        a.proc.popen.send_signal(signal.SIGCONT)

    async def fenced() -> None:
        assert "another node took this run over" in a.logs()

    await assert_eventually(fenced)
    detail = await owner_of(http, a, run_id)
    assert detail["finished_at"] == finished and detail["attempt"] == body["attempt"]
    assert (await final(http, location))[1] == body
    async with http.get(sync_backend.url + "/_violations") as resp:
        assert (await resp.json())["violations"] == []


class AttemptsBackend:
    """Answers each attempt `{"attempt": N}` once the test releases it; keeps its headers."""

    def __init__(self) -> None:
        self.seen: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.release: dict[int, asyncio.Event] = {}

    async def handle(self, request: web.Request) -> web.Response:
        attempt = int(request.headers["Durable-Attempt"])
        gate = self.release.setdefault(attempt, asyncio.Event())
        await self.seen.put(dict(request.headers))
        await gate.wait()
        return web.json_response({"attempt": attempt})

    def answer(self, attempt: int) -> None:
        self.release.setdefault(attempt, asyncio.Event()).set()


async def test_a_node_silent_past_its_lease_is_fenced(
    cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    """Its old attempt's sidecar writes get 409, its response is discarded, and it
    schedules no retry; the node that took the run over finishes it."""
    backend = AttemptsBackend()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        upstream = str(server.make_url("")).rstrip("/")
        a, b = cluster_factory(durable_route(upstream), lease="2s")
        run_id, location = await accept(http, a.url("/demo/x"))
        first = await asyncio.wait_for(backend.seen.get(), 10)
        a.proc.popen.send_signal(signal.SIGSTOP)
        try:
            second = await asyncio.wait_for(backend.seen.get(), 20)  # b took it over
            assert second["Durable-Attempt"] == "2"
            backend.answer(2)
            status, body = await final(http, on(b, location, a), within=20)
            assert (status, body) == (200, {"attempt": 2})
        finally:
            a.proc.popen.send_signal(signal.SIGCONT)
        step = f"{first['Durable-Sidecar']}/steps/late"
        headers = {"Authorization": f"Bearer {first['Durable-Token']}"}
        async with http.put(step, json={"output": 1}, headers=headers) as resp:
            assert resp.status == 409, await resp.text()
        backend.answer(1)  # the old attempt's response comes back to a: discarded
        assert (await final(http, location))[1] == {"attempt": 2}

        async def counted_lost() -> None:
            async with http.get(a.admin + "/metrics") as resp:
                assert "durable_runs_lost_total 1.0" in await resp.text()

        await assert_eventually(counted_lost)
        detail = await owner_of(http, a, run_id)
        assert [x["attempt"] for x in detail["attempts"]] == [1, 2] or detail["attempt"] == 2
        assert backend.seen.empty()  # no third attempt from anyone
    finally:
        await server.close()


async def test_concurrent_duplicates_on_two_nodes_attach_to_one_run(
    backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    a, b = cluster_factory(durable_route(backend.url, idempotency="required"))

    async def send(gw: Gateway, key: str) -> tuple[str, int, Any]:
        url = gw.url(f"/demo/steps?n=1&delay_ms=200&key={key}")
        async with http.post(url, headers={"Idempotency-Key": key}) as resp:
            return resp.headers["Durable-Run-Id"], resp.status, await resp.json()

    for n in range(10):
        key = f"order-{n}"
        (id_a, status_a, body_a), (id_b, status_b, body_b) = await asyncio.gather(
            send(a, key), send(b, key)
        )
        assert id_a == id_b, key  # one run, whichever node each duplicate entered
        assert (status_a, status_b) == (200, 200)
        assert body_a == body_b
    counts = await all_counts(http, backend)
    assert len(counts) == 10 and all(c["step-1"] == 1 for c in counts.values()), counts


async def test_a_result_url_on_another_node_follows_a_streaming_run(
    backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    """Joined mid-stream on the node that does not drive the run: the bytes so far, then
    the rest as it is stored, ending exactly as the stored result."""
    a, b = cluster_factory(durable_route(backend.url))
    path = "/demo/stream?chunks=30&interval_ms=100&size=8192"
    async with http.get(a.url(path), headers={"Prefer": "respond-async"}) as resp:
        assert resp.status == 202, await resp.text()
        run_id, location = resp.headers["Durable-Run-Id"], resp.headers["Location"]

    async def streaming() -> None:  # on a, which drives it: some bytes, not all
        stream = (await owner_of(http, a, run_id))["stream"]
        assert stream is not None and 100_000 < stream["bytes"] < 200_000, stream

    await assert_eventually(streaming)
    async with http.get(on(b, location, a)) as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        first_at = time.time()
        joined = first + await resp.read()
    detail = await owner_of(http, b, run_id)
    assert detail["status"] == "succeeded"
    assert first_at < detail["finished_at"] - 0.5  # it streamed, not answered at the end
    async with http.get(location) as resp:  # finished now: the stored result, from a
        assert resp.status == 200
        whole = await resp.read()
    assert len(whole) == 30 * 8192 and joined == whole


async def test_notices_missed_while_the_connection_is_down_are_not_missed(
    backend: Backend, cluster_factory: ClusterFactory, pg_url: str, http: aiohttp.ClientSession
) -> None:
    """The connection a node hears notices on (and holds its presence on) is cut, and
    stays down while the run it long-polls finishes on another node: once back, the node
    re-reads what its waiters wait for, and the long-poll answers then, not at its end."""
    a, b = cluster_factory(durable_route(backend.url))
    run_id, location = await accept(http, a.url("/demo/steps?n=1&pause_ms=1000"))
    poll = spawn(final(http, on(b, location, a), wait=30, within=40), name="long-poll")
    database = pg_url.rsplit("/", 1)[-1]
    admin = await asyncpg.connect(pg_url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        cut = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name LIKE 'gateway node-2:%'"
        )
        assert cut == 1

        async def finished_on_a() -> None:
            assert (await owner_of(http, a, run_id))["status"] == "succeeded"

        await assert_eventually(finished_on_a)  # its notice went out; b was not listening
        assert not poll.done()
    finally:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await admin.close()
    began = time.monotonic()
    status, body = await poll
    assert status == 200 and body["run_id"] == run_id
    assert time.monotonic() - began < 15  # re-read on reconnecting, not at wait=30
    assert "the cluster connection recovered" in b.logs()


async def test_retry_on_one_node_of_a_run_that_failed_on_another(
    backend: Backend, cluster_factory: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    a, b = cluster_factory(durable_route(backend.url, retry="{max_attempts: 1}"))
    run_id, location = await accept(http, a.url("/demo/steps?n=2&fail_at=2&fail_times=1"))
    status, _ = await final(http, location)
    assert status == 500
    async with http.post(f"{b.admin}/v1/runs/{run_id}/retry") as resp:
        assert resp.status == 200, await resp.text()
    status, body = await final(http, location, expect=200)  # asked of a, run on b
    assert body["attempt"] == 2
    assert (await all_counts(http, backend))[run_id]["step-1"] == 1  # its step came back
