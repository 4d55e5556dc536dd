"""Traces as a collector gets them: a real gateway exports to a real OTLP/HTTP receiver
(tests/otlp.py decodes with opentelemetry-proto), and a real backend records the
`traceparent` each attempt brought."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from step_protocol import StepClient, aiohttp_middleware
from tests.conftest import Backend, ClusterFactory, Gateway, GatewayFactory, durable_route
from tests.helpers import accept, assert_eventually, final, free_port, get_json
from tests.otlp import OtlpReceiver, Span

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def tracing(otlp: OtlpReceiver, **more: str) -> str:
    lines = "".join(f"  {key}: {value}\n" for key, value in more.items())
    return f"tracing:\n  otlp_endpoint: {otlp.url}\n{lines}"


@dataclass
class Traced:
    """A backend that fails its first attempt after a step, sleeps durably on its second,
    and answers on its third; it keeps the `traceparent` of every attempt."""

    url: str = ""
    seen: list[tuple[int, str]] = field(default_factory=list)


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    state = Traced()
    steps = StepClient()

    async def handle(request: web.Request) -> web.Response:
        ctx = steps.context(request.headers)
        state.seen.append((ctx.attempt, request.headers.get("traceparent", "")))
        await ctx.step("quote", lambda: {"price": 3})
        if ctx.attempt == 1:
            return web.json_response({"error": "flaky"}, status=500)
        await ctx.sleep("nap", seconds=0.3)
        await ctx.step("charge", lambda: {"charged": 3})
        return web.json_response({"attempt": ctx.attempt})

    app = web.Application(middlewares=[aiohttp_middleware])
    app.router.add_post("/traced", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await steps.close()
        await runner.cleanup()


async def stopped(gw: Gateway) -> None:
    """Stop a gateway in a thread: the receiver serves on this loop while the gateway's
    exporter posts its last spans (stopping it from the fixture would block both)."""
    assert await asyncio.to_thread(gw.proc.stop, signal.SIGTERM) == 0


async def first_step_stored(http: aiohttp.ClientSession, gw: Gateway, run_id: str) -> None:
    """Wait until the run's first step, and only it, is in the store (as `gw` reads it)."""

    async def stored() -> None:
        detail = await get_json(http, f"{gw.admin}/v1/runs/{run_id}")
        assert [s["step_id"] for s in detail["steps"] if s["completed"]] == ["step-1"]

    await assert_eventually(stored)


def one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


async def test_a_run_with_a_retry_and_a_sleep_is_one_trace_under_the_client(
    traced: Traced,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = gateway_factory(
        durable_route(traced.url, path="/traced") + "  retry: {initial_backoff: 100ms}\n",
        extra_yaml=tracing(otlp, service_name="orders-gateway"),
    )
    async with http.post(gw.url("/traced"), headers={"traceparent": CLIENT_PARENT}) as resp:
        assert resp.status == 200, await resp.text()
        run_id = resp.headers["Durable-Run-Id"]
        assert (await resp.json())["attempt"] == 3
    spans = await otlp.run_trace(run_id)
    assert {s.trace_id for s in spans} == {CLIENT_TRACE}
    assert otlp.outline(CLIENT_TRACE) == [
        "POST /traced",
        "  attempt 1",
        "    step quote",
        "  backoff",
        "  attempt 2",
        "  sleep nap",
        "  attempt 3",
        "    step nap",
        "    step charge",
    ]
    run = one(spans, "POST /traced")
    assert run.parent_span_id == CLIENT_SPAN and run.kind == "SPAN_KIND_SERVER"
    assert run.attributes["http.request.method"] == "POST"
    assert run.attributes["http.route"] == "/traced"
    assert run.attributes["http.response.status_code"] == 200
    assert run.attributes["durable.run_id"] == run_id
    assert run.attributes["durable.route"] == "demo"
    assert run.resource["service.name"] == "orders-gateway"
    attempts = [one(spans, f"attempt {n}") for n in (1, 2, 3)]
    assert [a.kind for a in attempts] == ["SPAN_KIND_CLIENT"] * 3
    assert [a.attributes["durable.attempt"] for a in attempts] == [1, 2, 3]
    assert [a.attributes["durable.outcome"] for a in attempts] == [
        "response",
        "suspended",
        "response",
    ]
    first = attempts[0]
    assert first.attributes["http.response.status_code"] == 500
    assert first.status == "STATUS_CODE_ERROR"
    assert first.attributes["url.full"] == traced.url + "/traced"
    [retry] = first.events
    assert retry.name == "retry" and "500" in retry.attributes["durable.retry.reason"]
    # Each attempt's backend got that attempt's span as its parent: distinct, exported.
    parents = [(n, f"00-{CLIENT_TRACE}-{a.span_id}-01") for n, a in enumerate(attempts, 1)]
    assert traced.seen == parents
    backoff, nap = one(spans, "backoff"), one(spans, "sleep nap")
    assert first.end <= backoff.start + 0.01 and backoff.end <= attempts[1].start + 0.01
    assert nap.attributes["durable.suspension"] == "sleep" and nap.duration >= 0.25
    assert attempts[1].end <= nap.start + 0.01 and nap.end <= attempts[2].start + 0.01
    charge = one(spans, "step charge")
    assert charge.attributes["durable.step_id"] == "charge"
    assert charge.attributes["durable.attempt"] == 3
    # Timed by the backend (the reference client sends started_at and duration_ms): the
    # step's work lies within its attempt.
    assert attempts[2].start <= charge.start <= charge.end <= attempts[2].end
    assert run.start <= first.start and attempts[2].start < run.end
    await stopped(gw)


@pytest.mark.both_stores
async def test_a_run_resumed_after_kill_9_continues_its_trace(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = gateway_factory(
        durable_route(backend.url), extra_yaml=tracing(otlp), storage="durability: sync"
    )
    run_id, location = await accept(
        http, gw.url("/demo/steps?n=3&pause_ms=1500"), headers={"traceparent": CLIENT_PARENT}
    )

    await first_step_stored(http, gw, run_id)
    os.kill(gw.proc.popen.pid, signal.SIGKILL)
    gw.proc.popen.wait()
    gw.restart()
    status, body = await final(http, location)
    assert status == 200 and body["attempt"] == 2
    spans = await otlp.run_trace(run_id)
    assert {s.trace_id for s in spans} == {CLIENT_TRACE}
    run = one(spans, "POST /demo/*")
    assert run.parent_span_id == CLIENT_SPAN
    assert run.attributes["durable.attempts"] == 2
    cut, second = one(spans, "attempt 1"), one(spans, "attempt 2")
    # The killed process never exported its attempt: the next start says it was cut off.
    assert cut.attributes["durable.outcome"] == "interrupted" and cut.status == "STATUS_CODE_ERROR"
    assert cut.parent_span_id == second.parent_span_id == run.span_id
    assert {s.name for s in otlp.children(second)} == {"step step-2", "step step-3"}
    await stopped(gw)


async def test_sampling_follows_the_client_and_the_ratio(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = gateway_factory(durable_route(backend.url), extra_yaml=tracing(otlp, sample_ratio="0"))
    unsampled_client = f"00-{'1' * 32}-{CLIENT_SPAN}-00"
    sent = {"none": None, "sampled": CLIENT_PARENT, "unsampled": unsampled_client}
    seen: dict[str, str] = {}
    for name, parent in sent.items():
        headers = {"traceparent": parent} if parent else {}
        async with http.get(gw.url("/demo/echo"), headers=headers) as resp:
            assert resp.status == 200
            seen[name] = (await resp.json())["headers"]["traceparent"]
    assert seen["none"].endswith("-00") and seen["unsampled"].endswith("-00")
    assert seen["sampled"].startswith(f"00-{CLIENT_TRACE}-") and seen["sampled"].endswith("-01")
    await otlp.wait_for(lambda s: s.trace_id == CLIENT_TRACE, count=2)
    await asyncio.sleep(1.5)  # a second export interval: nothing else comes
    assert {s.trace_id for s in otlp.spans} == {CLIENT_TRACE}
    await stopped(gw)


async def test_run_logs_carry_the_trace_id_in_text_and_json(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    for log_format in ("text", "json"):
        gw = gateway_factory(
            durable_route(backend.url), extra_yaml=tracing(otlp), args=("--log-format", log_format)
        )
        url = gw.url("/demo/steps?n=1&fail_at=1&retry_after=0")
        async with http.get(url, headers={"traceparent": CLIENT_PARENT}) as resp:
            assert resp.status == 200
            run_id = resp.headers["Durable-Run-Id"]
        retried = [
            line for line in gw.proc.output().splitlines() if "retry in" in line and run_id in line
        ]
        assert retried, gw.proc.output()[-2000:]
        if log_format == "text":
            assert retried[0].endswith(f"run_id={run_id} trace_id={CLIENT_TRACE}")
        else:
            entry = orjson.loads(retried[0])
            assert (entry["run_id"], entry["trace_id"]) == (run_id, CLIENT_TRACE)
        await stopped(gw)


async def test_a_failing_collector_holds_no_run_back_and_gets_the_spans_later(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    otlp.fail_next(2, status=503)
    gw = gateway_factory(durable_route(backend.url), extra_yaml=tracing(otlp))
    run_ids = []
    for _ in range(5):
        async with http.get(gw.url("/demo/steps?n=2")) as resp:
            assert resp.status == 200
            run_ids.append(resp.headers["Durable-Run-Id"])
    for run_id in run_ids:  # the refused batches were sent again
        await otlp.run_trace(run_id, within=20)
    assert [e.status for e in otlp.exports[:2]] == [503, 503]
    text = await (await http.get(f"{gw.admin}/metrics")).text()
    assert "durable_trace_spans_exported_total" in text
    await stopped(gw)


async def test_openmetrics_exemplars_link_latency_to_attempt_spans(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = gateway_factory(durable_route(backend.url), extra_yaml=tracing(otlp))
    async with http.get(gw.url("/demo/echo"), headers={"traceparent": CLIENT_PARENT}) as resp:
        parent = (await resp.json())["headers"]["traceparent"]
    accept_om = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with http.get(f"{gw.admin}/metrics", headers=accept_om) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await resp.text()
    exemplar = f'# {{span_id="{parent.split("-")[2]}",trace_id="{CLIENT_TRACE}"}}'
    assert any(
        line.startswith("durable_upstream_latency_seconds_bucket") and exemplar in line
        for line in text.splitlines()
    ), text
    async with http.get(f"{gw.admin}/metrics") as resp:  # the classic format has none
        assert "# {" not in await resp.text()
    await stopped(gw)


def exporter_pid(gw_pid: int) -> int:
    """The gateway's span exporter process (its only child)."""
    children = Path(f"/proc/{gw_pid}/task/{gw_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


async def test_an_exporter_that_dies_is_started_again_and_shutdown_flushes_it(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = gateway_factory(durable_route(backend.url), extra_yaml=tracing(otlp))

    async def traced_run() -> str:
        async with http.get(gw.url("/demo/steps?n=1")) as resp:
            assert resp.status == 200
            run_id: str = resp.headers["Durable-Run-Id"]
            return run_id

    await otlp.run_trace(await traced_run())
    first = exporter_pid(gw.proc.popen.pid)
    os.kill(first, signal.SIGKILL)

    async def replaced() -> int:
        pid = exporter_pid(gw.proc.popen.pid)
        assert pid != first
        return pid

    await assert_eventually(replaced, within=10)
    await otlp.run_trace(await traced_run())
    assert "the span exporter stopped, starting it again" in gw.proc.output()
    # A run that ends just before SIGTERM: its spans are posted as the gateway stops.
    last = await traced_run()
    await stopped(gw)
    await otlp.run_trace(last, within=1)


async def test_a_retry_held_by_an_open_circuit_breaker_is_a_span_of_its_own(
    backend: Backend,
    otlp: OtlpReceiver,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    route = durable_route(
        backend.url,
        retry="{initial_backoff: 10ms}",
        circuit_breaker="{failures: 1, interval: 500ms}",
    )
    gw = gateway_factory(route, extra_yaml=tracing(otlp))
    async with http.get(gw.url("/demo/steps?n=1&fail_at=1&retry_after=0")) as resp:
        assert resp.status == 200
        run_id = resp.headers["Durable-Run-Id"]
    spans = await otlp.run_trace(run_id)
    held = one(spans, "circuit open")
    assert held.attributes["durable.waiting"] == "circuit_open"
    assert held.parent_span_id == one(spans, "GET /demo/*").span_id
    assert one(spans, "attempt 1").end <= held.start <= held.end <= one(spans, "attempt 2").start
    await stopped(gw)


async def test_a_run_taken_over_by_another_node_continues_its_trace(
    sync_backend: Backend,
    otlp: OtlpReceiver,
    cluster_factory: ClusterFactory,
    http: aiohttp.ClientSession,
) -> None:
    a, b = cluster_factory(
        durable_route(sync_backend.url),
        lease="30s",
        storage="durability: sync",
        extra_yaml=tracing(otlp),
    )
    run_id, location = await accept(
        http, a.url("/demo/steps?n=3&pause_ms=1500"), headers={"traceparent": CLIENT_PARENT}
    )

    await first_step_stored(http, b, run_id)
    a.kill()
    status, body = await final(http, location.replace(a.ingress, b.ingress))
    assert status == 200 and body["attempt"] == 2
    spans = await otlp.run_trace(run_id)
    run = one(spans, "POST /demo/*")
    assert {s.trace_id for s in spans} == {CLIENT_TRACE} and run.parent_span_id == CLIENT_SPAN
    cut, second = one(spans, "attempt 1"), one(spans, "attempt 2")
    assert cut.attributes["durable.outcome"] == "interrupted"
    assert cut.parent_span_id == second.parent_span_id == run.span_id
    taking = [line for line in b.logs().splitlines() if "taking over a run" in line]
    assert taking and taking[0].endswith(f"run_id={run_id} trace_id={CLIENT_TRACE}")
    await stopped(b)


async def test_a_collector_that_is_down_costs_one_warning_and_a_bounded_stop(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    closed = free_port()  # nothing listens there
    gw = gateway_factory(
        durable_route(backend.url),
        extra_yaml=f"tracing:\n  otlp_endpoint: http://127.0.0.1:{closed}\n",
    )
    for _ in range(20):
        async with http.get(gw.url("/demo/steps?n=1")) as resp:
            assert resp.status == 200

    async def warned() -> None:
        assert "failing, retrying: ConnectionRefusedError" in gw.proc.output()

    await assert_eventually(warned)
    assert await asyncio.to_thread(gw.proc.stop, signal.SIGTERM, 12.0) == 0
    output = gw.proc.output()
    assert output.count("failing, retrying") == 1
    assert "spans not exported at shutdown" in output
    assert "did not stop" not in output  # the exporter gave up within its grace
