"""A sidecar stub for client tests, speaking SPEC.md §4 over a real socket, and one
interface over the four ways a backend gets a run context.

The stub keeps one run's steps in memory (first write wins, one current token) and logs
every call, so tests check what actually went over the wire. The `sidecar` and `make_ctx`
fixtures in this folder's conftest.py serve them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from step_protocol import RunContext, SyncRunContext

PROBLEM = "https://durable-gateway.dev/problems/"
RUN = "run_AbC-123"


@dataclass
class Call:
    method: str
    raw_path: str
    query: str
    auth: str | None
    body: Any
    peer: Any


@dataclass
class Sidecar:
    """In-memory sidecar for one run: first write wins, one current token."""

    base: str = ""
    token: str = "tok-1"
    steps: dict[str, Any] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    put_status: int | None = None
    """Force every output PUT to answer this status (with a problem body)."""
    transports: list[asyncio.Transport] = field(default_factory=list)
    on_record: Callable[[str], None] | None = None
    """Called with each step id the stub records, from the server's loop."""
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    """Answer of a sleep or wait POST by step id; default: 202 (suspend). A 200 records the
    step as the gateway does: a sleep's body, or a wait's `event`, becomes its output."""

    def headers(self, *, attempt: int = 1, steps: str | None = None) -> dict[str, str]:
        headers = {
            "Durable-Run-Id": RUN,
            "Durable-Attempt": str(attempt),
            "Durable-Sidecar": self.base,
            "Durable-Token": self.token,
        }
        if steps is not None:
            headers["Durable-Steps"] = steps
        return headers

    def puts(self) -> list[str]:
        """Step ids of the output PUTs, in order."""
        return [
            unquote(c.raw_path.rsplit("/", 1)[1])
            for c in self.calls
            if c.method == "PUT" and "output" in c.body
        ]

    def posts(self) -> list[tuple[str, str, Any]]:
        """(step id, `sleep` or `wait`, body) of the sleep and wait calls, in order."""
        found = []
        for c in self.calls:
            if c.method == "POST":
                segment, kind = c.raw_path.rsplit("/", 2)[1:]
                found.append((unquote(segment), kind, c.body))
        return found

    def gets(self) -> list[str]:
        return [c.raw_path.removeprefix(f"/v1/runs/{RUN}") for c in self.calls if c.method == "GET"]


STUB = web.AppKey("stub", Sidecar)
WAKE = "2025-01-31T09:31:00.000Z"
PENDING: dict[str, Any] = {
    "sleep": {"done": False, "wake_at": WAKE},
    "wait": {"event": None, "pending": True, "timeout_at": None},
}


def problem(status: int, slug: str) -> web.Response:
    body = {"type": PROBLEM + slug, "title": slug, "status": status, "detail": slug}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/problem+json"
    )


async def handle(request: web.Request) -> web.StreamResponse:
    stub = request.app[STUB]
    assert request.transport is not None
    if request.transport not in stub.transports:
        stub.transports.append(request.transport)
    raw_path = request.raw_path.split("?", 1)[0]
    body = orjson.loads(await request.read()) if request.can_read_body else None
    stub.calls.append(
        Call(
            request.method,
            raw_path,
            request.query_string,
            request.headers.get("Authorization"),
            body,
            request.transport.get_extra_info("peername"),
        )
    )
    prefix = f"/v1/runs/{RUN}/steps"
    if not raw_path.startswith(prefix):
        return problem(404, "not-found")
    if request.headers.get("Authorization") != f"Bearer {stub.token}":
        return problem(409, "stale-attempt")
    rest = raw_path[len(prefix) :]
    if request.method == "POST":
        _, segment, kind = rest.split("/")
        step_id = unquote(segment)
        status, answer = stub.answers.get(step_id, (202, PENDING[kind]))
        if status == 200 and step_id not in stub.steps:
            stub.steps[step_id] = answer if kind == "sleep" else answer["event"]
        if status >= 400:
            return problem(status, "bad-request")
        return web.json_response(answer, status=status)
    if rest == "" and request.method == "GET":
        return web.json_response({"steps": {k: {"output": v} for k, v in stub.steps.items()}})
    step_id = unquote(rest.removeprefix("/"))
    if request.method == "GET":
        if step_id not in stub.steps:
            return problem(404, "not-found")
        return web.json_response({"output": stub.steps[step_id]})
    assert request.method == "PUT" and isinstance(body, dict)
    if "error" in body:
        stub.errors.append((step_id, body["error"]["message"]))
        return web.json_response({"recorded": "error"})
    if stub.put_status is not None:
        return problem(stub.put_status, "too-large" if stub.put_status == 413 else "unavailable")
    if step_id in stub.steps:
        if stub.steps[step_id] == body["output"]:
            return web.json_response({})
        return problem(409, "step-conflict")
    stub.steps[step_id] = body["output"]
    if stub.on_record is not None:
        stub.on_record(step_id)
    return web.json_response({}, status=201)


# --- one scenario, four flavours -------------------------------------------------------


class Ctx:
    """One interface over every flavour; a sync context runs in a worker thread, so the
    stub's loop keeps serving."""

    def __init__(self, ctx: RunContext | SyncRunContext):
        self.ctx = ctx
        self.durable = ctx.durable

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.ctx, name)
        if isinstance(self.ctx, RunContext):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def step(self, step_id: str, fn: Callable[[], Any], *, sync: bool = False) -> Any:
        return await self._call("step", step_id, fn, sync=sync)

    async def sleep(self, step_id: str, seconds: Any = None, *, until: Any = None) -> None:
        await self._call("sleep", step_id, seconds, until=until)

    async def wait(self, step_id: str, event: str, **options: Any) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            "wait_for_event", step_id, event, **options
        )
        return result


MakeCtx = Callable[[dict[str, str]], Ctx]
FLAVOURS = ["StepClient", "RunContext", "SyncStepClient", "SyncRunContext"]
