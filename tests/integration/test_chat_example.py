"""The streaming chat example (examples/chat_backend.py) behind a real gateway: its answer
streams as SSE with ids after two steps recorded once, and a stream the backend breaks off
is retried from the memoized steps into the same whole result as an unbroken one.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Backend, Gateway, GatewayFactory, durable_route
from tests.helpers import (
    ROOT,
    Proc,
    assert_eventually,
    counts,
    free_port,
    python,
    run_status,
    wait_http_ok,
)

PROMPT: dict[str, Any] = {"prompt": "Why does the stream survive a crash?", "temperature": 0}
"""At temperature 0 the example's simulated model answers a prompt the same way every
time, so separate runs can be compared byte for byte."""


@pytest.fixture
def chat_backend(tmp_path: Path) -> Iterator[Backend]:
    port = free_port()
    args = [python(), str(ROOT / "examples" / "chat_backend.py"), "--port", str(port)]
    proc = Proc([*args, "--step-ms", "30", "--token-ms", "1"], tmp_path / "chat-backend.log")
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/_health", proc=proc.popen)
    except BaseException:
        proc.stop()
        raise
    yield Backend(f"http://127.0.0.1:{port}", proc)
    proc.stop()


@pytest.fixture
def gw(chat_backend: Backend, gateway_factory: GatewayFactory) -> Gateway:
    route = durable_route(
        chat_backend.url, name="chat", path="/chat/*", retry="{initial_backoff: 20ms}"
    )
    return gateway_factory(route)


async def read_stream(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The body as far as it came, and whether it came whole (False: it broke off)."""
    body = bytearray()
    try:
        async for chunk in resp.content.iter_any():
            body += chunk
    except aiohttp.ClientPayloadError:
        return bytes(body), False
    return bytes(body), True


def sse_events(body: bytes) -> list[dict[str, str]]:
    """The events of a whole SSE body, each as its fields (`id`, `event`, `data`)."""
    assert body.endswith(b"\n\n"), body[-80:]
    return [
        dict(line.split(": ", 1) for line in block.split("\n"))
        for block in body.decode().split("\n\n")[:-1]
    ]


def first_tokens(path: str, body: bytes, n: int) -> bytes:
    """The bytes of a whole answer's first n tokens (n SSE events, or n words of text)."""
    if path == "/chat":
        return b"".join(block + b"\n\n" for block in body.split(b"\n\n")[:n])
    return "".join(re.findall(r"\S+\s*", body.decode())[:n]).encode()


async def stored_result(http: aiohttp.ClientSession, result_url: str) -> tuple[str, bytes]:
    """Long-poll a result URL until the run's final response: its content type and body."""

    async def answered() -> tuple[str, bytes]:
        async with http.get(result_url, headers={"Prefer": "wait=5"}) as resp:
            assert resp.status == 200, f"{resp.status} {await resp.text()}"
            return resp.headers["Content-Type"], await resp.read()

    result: tuple[str, bytes] = await assert_eventually(answered, within=30)
    return result


async def steps_of(http: aiohttp.ClientSession, gw: Gateway, run_id: str) -> dict[str, Any]:
    """The finished run as the runs API shows it, once its steps are committed."""

    async def recorded() -> dict[str, Any]:
        detail = await run_status(http, gw, run_id)
        assert detail["status"] == "succeeded", detail["status"]
        assert [s["step_id"] for s in detail["steps"]] == ["retrieve", "plan"], detail["steps"]
        return detail

    result: dict[str, Any] = await assert_eventually(recorded)
    return result


async def crashed(
    http: aiohttp.ClientSession, gw: Gateway, path: str, prompt: dict[str, Any], after: int
) -> tuple[str, str, bytes, bool]:
    """A request whose first attempt breaks off after `after` tokens: its run id, result
    URL, and what the client received (and whether whole)."""
    headers = {"X-Crash-After": str(after)}
    async with http.post(gw.url(path), json=prompt, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        run_id, result_url = resp.headers["Durable-Run-Id"], resp.headers["Durable-Result"]
        received, whole = await read_stream(resp)
    return run_id, result_url, received, whole


def test_the_example_config_is_valid() -> None:
    config = str(ROOT / "examples" / "chat.yaml")
    args = [python(), "-m", "gateway", "check", "--config", config]
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.both_stores
async def test_the_answer_streams_as_sse_events_after_two_steps_recorded_once(
    gw: Gateway, chat_backend: Backend, http: aiohttp.ClientSession
) -> None:
    async with http.post(gw.url("/chat"), json=PROMPT) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        run_id = resp.headers["Durable-Run-Id"]
        assert resp.headers["Durable-Result"].startswith(gw.url(f"/_durable/runs/{run_id}/"))
        body, whole = await read_stream(resp)
    assert whole
    *tokens, done = sse_events(body)
    assert len(tokens) > 10
    assert [event["id"] for event in tokens] == [str(i) for i in range(len(tokens))]
    assert done == {"event": "done", "data": json.dumps({"tokens": len(tokens)})}
    text = "".join(json.loads(event["data"])["token"] for event in tokens)
    assert PROMPT["prompt"] in text

    async with http.post(chat_backend.url + "/chat", json=PROMPT) as direct:
        assert await direct.read() == body  # the gateway passed the stream on unchanged

    detail = await steps_of(http, gw, run_id)
    assert [(s["completed"], s["attempt"]) for s in detail["steps"]] == [(True, 1), (True, 1)]
    assert detail["attempt"] == 1
    assert await counts(http, chat_backend, run_id) == {"retrieve": 1, "plan": 1}


@pytest.mark.parametrize("path", ["/chat", "/chat/text"])
async def test_a_broken_stream_is_retried_into_the_result_of_an_unbroken_one(
    path: str, gw: Gateway, chat_backend: Backend, http: aiohttp.ClientSession
) -> None:
    async with http.post(gw.url(path), json=PROMPT) as resp:
        assert resp.status == 200, await resp.text()
        expected, whole = await read_stream(resp)
    assert whole

    run_id, result_url, received, _ = await crashed(http, gw, path, PROMPT, after=7)
    assert received.startswith(first_tokens(path, expected, 7))
    assert expected.startswith(received)  # never anything but the answer, whole or cut
    content_type, stored = await stored_result(http, result_url)
    assert stored == expected
    assert content_type.startswith("text/event-stream" if path == "/chat" else "text/plain")

    detail = await steps_of(http, gw, run_id)
    assert detail["attempt"] == 2
    assert [(s["completed"], s["attempt"]) for s in detail["steps"]] == [(True, 1), (True, 1)]
    assert await counts(http, chat_backend, run_id) == {"retrieve": 1, "plan": 1}


@pytest.mark.both_stores
async def test_a_sampled_answer_streams_again_from_its_memoized_steps(
    gw: Gateway, chat_backend: Backend, http: aiohttp.ClientSession
) -> None:
    """At a temperature above 0 each call of a step samples afresh: the retry can repeat
    what the client already got only because it reuses the first attempt's outputs."""
    prompt = {"prompt": PROMPT["prompt"], "temperature": 1.0}
    run_id, result_url, received, _ = await crashed(http, gw, "/chat", prompt, after=20)
    _, stored = await stored_result(http, result_url)
    assert received.startswith(first_tokens("/chat", stored, 20))
    assert stored.startswith(received)
    assert await counts(http, chat_backend, run_id) == {"retrieve": 1, "plan": 1}


@pytest.mark.parametrize("path", ["/chat", "/chat/text"])
async def test_the_client_of_a_broken_stream_gets_one_seamless_response(
    path: str, gw: Gateway, http: aiohttp.ClientSession
) -> None:
    _, result_url, received, whole = await crashed(http, gw, path, PROMPT, after=7)
    _, stored = await stored_result(http, result_url)
    assert (received, whole) == (stored, True)
