"""Absurd sleep and wait bodies against a live run: a 400 problem, and nothing stored.

Each bad call is followed by a good one on the same step id. Had the bad call stored
its sleep or wait, the first-call-fixes-it rule would answer that one instead (a wake
time that cannot be formatted, a wait that never times out).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from step_protocol import wire
from tests.conftest import Gateway, GatewayFactory, HeldBackend, durable_route
from tests.helpers import assert_eventually, until_status

_IN_11_YEARS = (datetime.now(UTC) + timedelta(days=11 * 365)).isoformat()

BAD_SLEEPS: list[bytes] = [
    orjson.dumps(body)
    for body in (
        {"seconds": 1e20},
        {"seconds": 1e308},
        {"seconds": "99999999999d"},
        {"seconds": wire.MAX_DURATION + 1},
        {"seconds": -1},
        {"seconds": True},
        {"seconds": None},
        {"seconds": [1]},
        {"seconds": "1" * 100 + "s"},
        {"seconds": "soon"},
        {"until": "9999-12-31T23:59:59Z"},
        {"until": _IN_11_YEARS},
        {"until": "0001-01-01T00:00:00+01:00"},  # year 0 in UTC
        {"until": 1234567890},
        {"until": "2025-01-31T09:30:00"},  # no offset
        {"seconds": 1, "until": "2025-01-31T09:30:00Z"},
    )
] + [b'{"seconds": NaN}', b'{"seconds": Infinity}', b'{"seconds": 1e400}']

BAD_WAITS: list[dict[str, Any]] = [
    {"event": "e", "timeout": 1e308},
    {"event": "e", "timeout": "99999999999d"},
    {"event": "e", "timeout": wire.MAX_DURATION + 1},
    {"event": "e", "timeout": -5},
    {"event": "e", "timeout": False},
    {"event": "e", "timeout": "x" * 10_000},
    {"event": "e", "lookback": 1e20},
    {"event": "e", "lookback": "-1s"},
    {"event": "e", "match": {f"data.k{i}": i for i in range(wire.MAX_MATCH_KEYS + 1)}},
    {"event": "e", "match": {"data." + "k" * wire.MAX_MATCH_PATH: 1}},
    {"event": "e", "match": {"data.k": "v" * wire.MAX_MATCH_VALUE}},
    {"event": "e", "match": {"data..k": 1}},
    {"event": "e", "match": ["data.k"]},
    {"event": "e" * (wire.MAX_EVENT_NAME + 1)},
    {"event": ""},
]


async def _run(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> tuple[str, dict[str, str], asyncio.Future[aiohttp.ClientResponse], Gateway]:
    gw = gateway_factory(durable_route(held.url, retry="{max_attempts: 1}"))
    request = asyncio.ensure_future(http.post(gw.url("/demo/x"), data=b"{}", allow_redirects=False))
    headers = await asyncio.wait_for(held.attempts.get(), 10)
    auth = {"Authorization": "Bearer " + headers["Durable-Token"]}
    return headers["Durable-Sidecar"], auth, request, gw


async def _post(
    http: aiohttp.ClientSession, url: str, auth: dict[str, str], body: bytes
) -> tuple[int, str, dict[str, Any]]:
    headers = {**auth, "Content-Type": "application/json"}
    async with http.post(url, data=body, headers=headers) as resp:
        raw = await resp.read()
        json = resp.content_type.endswith("json")
        return resp.status, resp.content_type, orjson.loads(raw) if json else {"text": raw[:200]}


async def test_absurd_sleeps_are_refused_and_store_nothing(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, auth, request, _ = await _run(gateway_factory, held, http)
    wrong: list[str] = []
    for i, body in enumerate(BAD_SLEEPS):
        url = f"{base}/steps/nap{i}/sleep"
        status, kind, problem = await _post(http, url, auth, body)
        if (status, kind) != (400, "application/problem+json") or problem["status"] != 400:
            wrong.append(f"{body!r}: {status} {kind} {problem}")
            continue
        status, _, answer = await _post(http, url, auth, b'{"seconds": 0}')
        if status != 200 or answer.get("done") is not True:
            wrong.append(f"{body!r}, then seconds 0: {status} {answer}")
    assert not wrong, "\n".join(wrong)

    past = await _post(http, f"{base}/steps/past/sleep", auth, b'{"until": "1970-01-02T00:00:00Z"}')
    assert past == (200, "application/json", {"done": True, "wake_at": "1970-01-02T00:00:00.000Z"})
    status, _, longest = await _post(
        http, f"{base}/steps/longest/sleep", auth, orjson.dumps({"seconds": wire.MAX_DURATION})
    )
    assert status == 202 and longest["done"] is False  # the ceiling itself is allowed
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 303  # suspended for ten years: the client goes to its result URL


async def test_absurd_waits_are_refused_and_store_nothing(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    base, auth, request, gw = await _run(gateway_factory, held, http)
    wrong: list[str] = []
    for i, body in enumerate(BAD_WAITS):
        url = f"{base}/steps/wait{i}/wait"
        status, kind, problem = await _post(http, url, auth, orjson.dumps(body))
        if (status, kind) != (400, "application/problem+json") or problem["status"] != 400:
            wrong.append(f"{str(body)[:80]}: {status} {kind} {problem}")
            continue
        # A stored wait would still be pending here: the first call fixes the wait.
        status, _, answer = await _post(http, url, auth, b'{"event": "e", "timeout": 0}')
        if (status, answer) != (200, {"event": None}):
            wrong.append(f"{str(body)[:80]}, then timeout 0: {status} {answer}")
    assert not wrong, "\n".join(wrong)

    largest = {
        "event": "e" * wire.MAX_EVENT_NAME,
        "match": {f"data.{'k' * (wire.MAX_MATCH_PATH - 7)}{i}": i for i in range(31)}
        | {"data.v": "v" * (wire.MAX_MATCH_VALUE - 2)},
        "timeout": wire.MAX_DURATION,
        "lookback": f"{wire.MAX_DURATION}s",
    }
    status, _, pending = await _post(http, f"{base}/steps/big/wait", auth, orjson.dumps(largest))
    assert status == 202 and pending["pending"] is True  # every bound itself is allowed
    events = gw.admin + wire.EVENTS_PATH
    async with http.post(events, json={"name": "e" * (wire.MAX_EVENT_NAME + 1)}) as resp:
        assert resp.status == 400 and resp.content_type == "application/problem+json"
    async with http.post(events, json={"name": largest["event"], "data": {}}) as resp:
        assert resp.status == 202  # as long a name as a wait may wait for
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 303  # suspended on the wait


async def test_a_sleep_or_wait_on_a_step_completed_otherwise_is_refused(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    """Found by fuzzing: a sleep (or wait) on the id of a step completed by a PUT, or as
    the other kind, answered 200 with that step's output in place of its own answer."""
    base, auth, request, _ = await _run(gateway_factory, held, http)
    headers = {**auth, "Content-Type": "application/json"}
    async with http.put(f"{base}/steps/put", data=b'{"output": {"x": 1}}', headers=headers) as resp:
        assert resp.status == 201
    nap, wait = b'{"seconds": 0}', b'{"event": "e", "timeout": 0}'
    assert (await _post(http, f"{base}/steps/nap/sleep", auth, nap))[0] == 200
    assert (await _post(http, f"{base}/steps/wait/wait", auth, wait))[0] == 200
    for step, call, body in [
        ("put", "sleep", nap),
        ("put", "wait", b'{"event": "e"}'),
        ("nap", "wait", b'{"event": "e"}'),
        ("wait", "sleep", nap),
    ]:
        status, kind, problem = await _post(http, f"{base}/steps/{step}/{call}", auth, body)
        assert (status, kind) == (400, "application/problem+json"), (step, call, problem)
        assert "completed otherwise" in problem["detail"]
    assert (await _post(http, f"{base}/steps/nap/sleep", auth, nap))[2]["done"] is True
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200


async def test_a_durable_query_other_than_sync_is_refused_and_stores_nothing(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    """Found by fuzzing: `?durable=0` (or a typo of `sync`) was acknowledged as an
    asynchronous write, quietly weaker than the caller asked for."""
    base, auth, request, _ = await _run(gateway_factory, held, http)
    headers = {**auth, "Content-Type": "application/json"}
    for value in ("0", "synch", "SYNC", ""):
        url = f"{base}/steps/s?durable={value}"
        async with http.put(url, data=b'{"output": 1}', headers=headers) as resp:
            assert (resp.status, resp.content_type) == (400, "application/problem+json"), value
        async with http.get(f"{base}/steps/s", headers=auth) as resp:
            assert resp.status == 404, value
    async with http.put(
        f"{base}/steps/s?durable=sync", data=b'{"output": 1}', headers=headers
    ) as r:
        assert r.status == 201
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200


@pytest.mark.both_stores
async def test_nul_characters_are_refused_before_they_reach_the_store(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    """Found by fuzzing on PostgreSQL, whose text refuses U+0000: a step id holding one
    was acknowledged, then its write refused and its run failed; an event name or id, an
    admin run id or route filter holding one answered 503, as if the store were down."""
    base, auth, request, gw = await _run(gateway_factory, held, http)
    headers = {**auth, "Content-Type": "application/json"}
    admin = {"Authorization": "Bearer s3"}  # not configured: sent and ignored
    refused = [
        ("PUT", URL(f"{base}/steps/a%00b", encoded=True), b'{"output": 1}', headers, 400),
        ("POST", URL(f"{base}/steps/w/wait"), b'{"event": "e\\u0000"}', headers, 400),
        ("POST", URL(gw.admin + "/v1/events"), b'{"name": "e\\u0000"}', {}, 400),
        ("POST", URL(gw.admin + "/v1/events"), b'{"name": "e", "id": "\\u0000"}', {}, 400),
        ("GET", URL(gw.admin + "/v1/runs?route=a%00", encoded=True), b"", admin, 400),
        ("GET", URL(gw.admin + "/v1/runs/a%00b", encoded=True), b"", admin, 404),
        ("POST", URL(gw.admin + "/v1/runs/a%00b/cancel", encoded=True), b"", admin, 404),
        ("POST", URL(gw.admin + "/v1/runs/a%00b/retry", encoded=True), b"", admin, 404),
    ]
    for method, url, body, sent, status in refused:
        async with http.request(method, url, data=body, headers=sent) as resp:
            assert (resp.status, resp.content_type) == (status, "application/problem+json"), url
    error = b'{"error": {"message": "bad\\u0000byte"}}'
    async with http.put(f"{base}/steps/s", data=error, headers=headers) as resp:
        assert resp.status == 200
    async with http.put(f"{base}/steps/s", data=b'{"output": 1}', headers=headers) as resp:
        assert resp.status == 201  # the run is alive: nothing failed it behind the scenes
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200
        run_id = resp.headers["Durable-Run-Id"]

    async def stored() -> dict[str, Any]:
        # The runs API lists steps from the store: under async durability a step shows
        # once its write is committed, which may trail the run's live status.
        detail = await until_status(http, gw, run_id, "succeeded")
        assert len(detail["steps"]) == 1, detail["steps"]
        step: dict[str, Any] = detail["steps"][0]
        return step

    step = await assert_eventually(stored)
    assert step["errors"][0]["message"] == "bad\ufffdbyte"
