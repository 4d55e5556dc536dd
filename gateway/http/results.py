"""Result URLs on the ingress: the final response of a run, or its status, by capability token.

`GET /_durable/runs/{id}/result?token=…` long-polls until the run finishes; a wrong token
is a 404, indistinguishable from an unknown run.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.engine.live import LiveRun, until_changed
from gateway.errors import NotFound
from gateway.http import delivery
from gateway.http.delivery import Prefer
from gateway.http.services import Services
from gateway.store import StoredResponse
from step_protocol import wire

PREFIX = "/_durable/runs/"
"""`{PREFIX}{run_id}/result` is a run's result, `{PREFIX}{run_id}` its status."""


def target(segments: list[str] | None) -> tuple[str, bool] | None:
    """(run id, True for the result or False for the status) for a path's segments after
    PREFIX (`listeners.segments`); None when they are not a result URL's."""
    if segments is None or not 1 <= len(segments) <= 2 or not segments[0]:
        return None
    if len(segments) == 2 and segments[1] != "result":
        return None
    return segments[0], len(segments) == 2


def result_url(request: web.BaseRequest, services: Services, run_id: str) -> str:
    """Absolute result URL: `server.public_url` when set, else from the request's Host."""
    base = services.config.server.public_url or f"{request.scheme}://{request.host}"
    token = services.tokens.result_token(run_id)
    return f"{base}/_durable/runs/{run_id}/result?token={token}"


def replay(stored: StoredResponse, result: str) -> web.Response:
    """A stored final response, verbatim, with its run's result URL (`Durable-Result`)."""
    response = web.Response(status=stored.status, body=stored.body)
    response.headers.popall("Content-Type", None)
    for name, value in stored.headers:
        if name.lower() != "content-length":
            response.headers.add(name, value)
    response.headers[wire.RESULT] = result
    return response


def _check(request: web.BaseRequest, services: Services, run_id: str) -> None:
    if not services.tokens.check_result_token(run_id, request.query.get("token")):
        raise NotFound("no such run, or a wrong token")


async def get_result(
    request: web.BaseRequest, services: Services, run_id: str
) -> web.StreamResponse:
    _check(request, services, run_id)
    prefer = delivery.parse_prefer(request.headers.getall("Prefer", []))
    wait = delivery.result_wait(prefer)
    deadline = time.monotonic() + wait
    while True:
        state = await services.view.get(run_id)
        if state is None:
            raise NotFound("no such run, or a wrong token")
        if (live := state.live) is not None:
            services.driver.hold(live)
            try:
                answer = await _wait_live(request, services, live, prefer, deadline)
            finally:
                services.driver.release(live)
            if answer is not None:
                return answer
            continue
        if state.response is not None:
            return replay(state.response, result_url(request, services, run_id))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _pending(request, run_id, prefer, state.status)
        if services.driver.get(run_id) is not None:
            continue  # resumed while the store was read
        resumed = services.driver.watch(run_id)  # suspended in the store: wait until due
        try:
            async with asyncio.timeout(remaining):
                await resumed.wait()
        except TimeoutError:
            return _pending(request, run_id, prefer, state.status)


async def _wait_live(
    request: web.BaseRequest, services: Services, live: LiveRun, prefer: Prefer, deadline: float
) -> web.Response | None:
    """The result of a run live here, or 202 at the deadline; None if it left memory."""
    run_id = live.run.run_id
    while services.driver.get(run_id) is live:
        changed = live.changed()
        if live.run.finished and live.run.response is not None:
            if live.final_commit is not None:  # what a result URL shows must survive a crash
                await asyncio.shield(live.final_commit)
            return replay(live.run.response, result_url(request, services, run_id))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _pending(request, run_id, prefer, live.run.status.value)
        await until_changed(changed, remaining)
    return None


def _pending(request: web.BaseRequest, run_id: str, prefer: Prefer, status: str) -> web.Response:
    """Still running after the long-poll: come back to the same URL."""
    headers = {
        "Location": str(request.url),
        "Retry-After": "1",
        wire.RUN_ID: run_id,
        wire.RESULT: str(request.url),
    }
    applied = delivery.preference_applied(prefer, honoured_async=False, honoured_wait=True)
    if applied:
        headers["Preference-Applied"] = applied
    return web.json_response({"run_id": run_id, "status": status}, status=202, headers=headers)


async def get_status(request: web.BaseRequest, services: Services, run_id: str) -> web.Response:
    _check(request, services, run_id)
    state = await services.view.get(run_id)
    if state is None:
        raise NotFound("no such run, or a wrong token")
    body = {
        "run_id": run_id,
        "route": state.route,
        "status": state.status,
        "attempt": state.attempt,
        "created_at": state.created_at,
        "finished_at": state.finished_at,
        "wake_at": state.wake_at,
        "result_url": result_url(request, services, run_id),
    }
    return web.json_response(body)
