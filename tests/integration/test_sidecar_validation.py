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

from step_protocol import wire
from tests.conftest import Gateway, GatewayFactory, HeldBackend, durable_route

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
