"""Hold, 303 to the result URL, Prefer: respond-async, long-poll and run status."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route

SLOW_RETRY = "{max_attempts: 3, initial_backoff: 1500ms, max_backoff: 1500ms, jitter: 0}"


@pytest.mark.both_stores
async def test_hold_then_303_to_the_result_url(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=SLOW_RETRY, hold="500ms"))
    async with http.post(
        gw.url("/demo/steps?n=2&fail_at=2&mode=500"), allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert "Retry-After" not in resp.headers
        location = resp.headers["Location"]
        run_id = resp.headers["Durable-Run-Id"]
    assert location.startswith(gw.ingress + f"/_durable/runs/{run_id}/result?token=")
    async with http.get(location) as resp:  # long-polls until the retry finished
        assert resp.status == 200
        body = await resp.json()
    assert body["attempt"] == 2 and body["run_id"] == run_id
    async with http.get(location) as resp:  # served again, verbatim, from the store
        assert resp.status == 200
        assert resp.headers["Durable-Run-Id"] == run_id
        assert await resp.json() == body


async def test_retry_within_hold_is_answered_on_the_same_connection(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, retry="{initial_backoff: 100ms, jitter: 0}", hold="5s")
    )
    async with http.post(
        gw.url("/demo/steps?n=2&fail_at=2&mode=500"), allow_redirects=False
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["attempt"] == 2


async def test_browser_style_client_follows_the_303(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=SLOW_RETRY, hold="0s"))
    async with http.post(gw.url("/demo/steps?n=2&fail_at=2&mode=500")) as resp:
        assert resp.status == 200  # aiohttp follows 303 with a GET, like fetch()
        assert (await resp.json())["attempt"] == 2


async def test_a_result_url_refuses_other_methods_with_405_and_allow(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`curl -L -X POST` re-POSTs to the 303's Location: it gets 405, not a 404."""
    gw = gateway_factory(durable_route(backend.url, retry=SLOW_RETRY, hold="0s"))
    async with http.post(gw.url("/demo/steps?n=1"), allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    async with http.post(location) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "DELETE,GET,HEAD"
        assert resp.content_type == "application/problem+json"
    status_url = location.replace("/result?", "?")
    async with http.delete(status_url) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET,HEAD"
    async with http.get(location) as resp:  # the POSTs changed nothing
        assert resp.status == 200
        assert (await resp.json())["attempt"] == 1


@pytest.mark.both_stores
async def test_prefer_respond_async_gives_202_then_poll(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    async with http.post(gw.url("/demo/steps?n=2"), headers={"Prefer": "respond-async"}) as resp:
        assert resp.status == 202
        assert resp.headers["Preference-Applied"] == "respond-async"
        assert int(resp.headers["Retry-After"]) >= 0
        location = resp.headers["Location"]
        run_id = resp.headers["Durable-Run-Id"]
    async with http.get(location) as resp:
        assert resp.status == 200
        assert (await resp.json())["run_id"] == run_id
    status_url = location.replace("/result?", "?")
    async with http.get(status_url) as resp:
        assert resp.status == 200
        status = await resp.json()
    assert status["run_id"] == run_id and status["status"] == "succeeded"


async def test_prefer_wait_bounds_the_hold(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry=SLOW_RETRY, hold="30s"))
    async with http.post(
        gw.url("/demo/steps?n=2&fail_at=2&mode=500"),
        headers={"Prefer": "wait=1"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Preference-Applied"] == "wait=1"


@pytest.mark.both_stores
async def test_result_long_poll_answers_202_after_the_wait(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    slow = "{max_attempts: 2, initial_backoff: 10s, max_backoff: 10s, jitter: 0}"
    gw = gateway_factory(durable_route(backend.url, retry=slow, hold="0s"))
    async with http.post(
        gw.url("/demo/steps?n=1&fail_at=1&mode=500"), allow_redirects=False
    ) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    async with http.get(location, headers={"Prefer": "wait=1"}) as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == location
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["Preference-Applied"] == "wait=1"


@pytest.mark.both_stores
async def test_wrong_token_is_404(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    async with http.get(gw.url("/demo/echo")) as resp:
        run_id = resp.headers["Durable-Run-Id"]
    for url in (
        f"/_durable/runs/{run_id}/result?token=nope",
        f"/_durable/runs/{run_id}/result",
        f"/_durable/runs/{run_id}?token=nope",
    ):
        async with http.get(gw.url(url)) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"


async def test_every_durable_response_names_its_result_url(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`Durable-Result` beside `Durable-Run-Id`: on a short answer, a streamed one, a 303,
    a 202 and the result URL's own replay, always a URL that serves the same result."""
    gw = gateway_factory(durable_route(backend.url, retry=SLOW_RETRY, hold="500ms"))
    prefix = gw.ingress + "/_durable/runs/"
    seen: dict[str, str] = {}
    requests = {
        "short": ("POST", "/demo/steps?n=1", {}),
        "streamed": ("GET", "/demo/stream?chunks=3&size=65536&interval_ms=0", {}),
        "303": ("POST", "/demo/steps?n=2&fail_at=2&mode=500", {}),
        "202": ("POST", "/demo/steps?n=1", {"Prefer": "respond-async"}),
    }
    for name, (method, path, headers) in requests.items():
        url = gw.url(path)
        async with http.request(method, url, headers=headers, allow_redirects=False) as resp:
            run_id = resp.headers["Durable-Run-Id"]
            result = resp.headers["Durable-Result"]
            await resp.read()
        assert result.startswith(f"{prefix}{run_id}/result?token="), name
        seen[name] = result
    assert seen["303"] != seen["short"]
    for name, result in seen.items():
        async with http.get(result) as resp:  # long-polls where the run is still going
            assert resp.status == 200, name
            assert resp.headers["Durable-Result"] == result
