"""Happy path through a durable route, plain routes, and what the ingress refuses."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import assert_eventually, counts, send_after_continue, send_head


async def test_happy_path_passes_the_response_through(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    async with http.post(
        gw.url("/demo/echo?x=1&y=2"),
        data=b"hello body",
        headers={
            "X-Custom": "abc",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    ) as resp:
        assert resp.status == 200
        run_id = resp.headers["Durable-Run-Id"]
        echo = await resp.json()
    assert len(run_id) >= 22
    assert echo["method"] == "POST"
    assert echo["path"] == "/demo/echo"
    assert echo["query"] == {"x": "1", "y": "2"}
    assert echo["body"] == "hello body"
    h = {k.lower(): v for k, v in echo["headers"].items()}
    assert h["x-custom"] == "abc"
    assert h["durable-run-id"] == run_id
    assert h["durable-attempt"] == "1"
    assert h["durable-sidecar"] == f"{gw.sidecar}/v1/runs/{run_id}"
    assert h["durable-token"]
    assert "durable-steps" not in h
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == gw.ingress.removeprefix("http://")
    trace = h["traceparent"].split("-")
    assert trace[1] == "0af7651916cd43dd8448eb211c80319c" and trace[2] != "b7ad6b7169203331"


async def test_client_cannot_inject_durable_headers(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    forged = {
        "Durable-Token": "forged",
        "Durable-Steps": "e30",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "drop me",
    }
    async with http.get(gw.url("/demo/echo"), headers=forged) as resp:
        h = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    assert h["durable-token"] != "forged"
    assert "durable-steps" not in h
    assert "x-hop" not in h


async def test_steps_happy_path_runs_each_step_once(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    async with http.post(gw.url("/demo/steps?n=3")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["attempt"] == 1
    assert len(body["results"]) == 3
    assert await counts(http, backend, body["run_id"]) == {"step-1": 1, "step-2": 1, "step-3": 1}


async def test_streaming_is_passed_through_as_it_arrives(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    async with http.get(gw.url("/demo/stream?chunks=5&interval_ms=300")) as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        got_first = time.monotonic()
        rest = await resp.content.read()
        done = time.monotonic()
    assert first.strip()
    assert len(rest.splitlines()) == 4
    # The first line arrived well before the stream ended: nothing buffered the whole body.
    assert done - got_first > 0.6


async def test_plain_route_is_a_reverse_proxy(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, durable="false"))
    async with http.post(gw.url("/demo/echo"), data=b"x" * 100_000) as resp:
        assert resp.status == 200
        assert "Durable-Run-Id" not in resp.headers
        echo = await resp.json()
    assert len(echo["body"]) == 100_000
    assert "durable-token" not in {k.lower() for k in echo["headers"]}


async def test_no_route_is_404_problem(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, path="/demo/echo"))
    async with http.get(gw.url("/nothing/here")) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert problem["status"] == 404 and problem["title"] and problem["type"] and problem["detail"]


async def test_body_over_max_body_is_413(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, max_body="1KiB"))
    async with http.post(gw.url("/demo/echo"), data=b"x" * 2048) as resp:
        assert resp.status == 413
        assert resp.content_type == "application/problem+json"
    async with http.post(gw.url("/demo/echo"), data=b"x" * 1000) as resp:
        assert resp.status == 200


async def test_client_disconnect_cancels_nothing(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    try:
        async with asyncio.timeout(0.3):
            async with http.post(gw.url("/demo/steps?n=2&delay_ms=1000")) as resp:
                await resp.read()
    except TimeoutError:
        pass

    async def finished() -> None:
        async with http.get(gw.admin + "/metrics") as resp:
            text = await resp.text()
        assert 'durable_runs_total{outcome="succeeded",route="demo"} 1.0' in text

    await assert_eventually(finished)


def _expecting(expect: str, length: int) -> dict[str, str]:
    return {"Expect": expect, "Content-Length": str(length), "Content-Type": "text/plain"}


@pytest.mark.parametrize("durable", ["true", "false"])
async def test_expect_100_continue_is_answered_before_the_body(
    backend: Backend, gateway_factory: GatewayFactory, durable: str
) -> None:
    gw = gateway_factory(durable_route(backend.url, durable=durable))
    body = b"sent after the 100"
    url = gw.url("/demo/echo")
    final, answer = await send_after_continue(url, "POST", {"Content-Type": "text/plain"}, body)
    assert final.startswith(b"HTTP/1.1 200 ")
    assert orjson.loads(answer)["body"] == body.decode()


@pytest.mark.parametrize(
    ("expect", "length", "status"),
    [("100-continue", 2048, b"413"), ("something-else", 10, b"417")],
)
async def test_a_refused_expectation_is_answered_without_the_body(
    backend: Backend, gateway_factory: GatewayFactory, expect: str, length: int, status: bytes
) -> None:
    gw = gateway_factory(durable_route(backend.url, max_body="1KiB"))
    _, writer, head = await send_head(gw.url("/demo/echo"), "POST", _expecting(expect, length))
    writer.close()
    assert head.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"application/problem+json" in head


async def test_an_empty_expect_header_expects_nothing(
    backend: Backend, gateway_factory: GatewayFactory
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    _, writer, head = await send_head(gw.url("/demo/echo"), "POST", _expecting("", 0))
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_result_paths_are_decoded_as_one_segment_each(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # An encoded slash stays inside the run id: never a result URL's "/result", and the
    # reserved /_durable/ paths never reach a catch-all route's upstream.
    gw = gateway_factory(durable_route(backend.url, path="/*"))
    for path in ("/_durable/runs/a%2Fresult", "/_durable/runs/a%2Fb/result"):
        async with http.get(URL(gw.url(path), encoded=True)) as resp:
            assert resp.status == 404, path
            assert (await resp.json())["detail"] == "no such run, or a wrong token"
