"""Result URLs on the ingress: the final response of a run, or its status, by capability token.

`GET /_durable/runs/{id}/result?token=…` long-polls until the run finishes; a wrong token
is a 404, indistinguishable from an unknown run.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.engine.changes import until_changed
from gateway.engine.live import LiveRun
from gateway.engine.stream import Stream
from gateway.errors import NotFound, ResponseNotKept
from gateway.http import delivery, held
from gateway.http.delivery import Prefer
from gateway.http.held import Follow
from gateway.http.problems import problem_response
from gateway.http.services import Services
from gateway.store import BODY_TOO_LARGE, RunStatus, StoredResponse
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
    """A final response kept inline, verbatim, with its run's result URL (`Durable-Result`)."""
    response = web.Response(status=stored.status, body=stored.body)
    response.headers.popall("Content-Type", None)
    for name, value in stored.headers:
        if name.lower() != "content-length":
            response.headers.add(name, value)
    response.headers[wire.RESULT] = result
    return response


async def answer_final(
    request: web.BaseRequest,
    services: Services,
    run_id: str,
    route: str,
    stored: StoredResponse,
    *,
    ranged: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> web.StreamResponse:
    """A run's final response: inline, streamed from the store's chunks, or 410 when it
    was too large to keep. `ranged` honours `Range: bytes=…` (the result URL does)."""
    url = result_url(request, services, run_id)
    if stored.kept == BODY_TOO_LARGE:
        raise ResponseNotKept(
            "the response passed its route's max_response and was streamed to the client "
            "without being kept",
            run_id=run_id,
        )
    size = len(stored.body) if stored.kept is None else stored.kept
    span = _range(request, size) if ranged else None
    if isinstance(span, web.Response):
        return span
    start, end = span if span is not None else (0, size)
    status = 206 if span is not None else None
    if span is not None:
        extra = (*extra, ("Content-Range", f"bytes {start}-{end - 1}/{size}"))
    if stored.kept is None:
        response = replay(stored, url)
        if status is not None:
            response.set_status(status)
            response.body = stored.body[start:end]
        for name, value in extra:
            response.headers[name] = value
        return response
    stream = Stream.finished(run_id, services.store, services.writer, stored)
    how = Follow(route, run_id, url, hold=0, start=start, end=end, status=status, extra=extra)
    return await held.follow(request, stream, how)


def _range(request: web.BaseRequest, size: int) -> tuple[int, int] | web.Response | None:
    """The byte span [start, end) a `Range` header asks of a body of `size` bytes; None
    without one (or with one this ignores, as RFC 9110 allows: several ranges, another
    unit, a malformed value); a 416 when it cannot be met."""
    if "Range" not in request.headers:
        return None
    try:
        wanted = request.http_range
    except ValueError:
        return None
    start, stop = wanted.start, wanted.stop
    if start is None:
        return None
    if start < 0:  # bytes=-N: the last N bytes
        start = max(0, size + start)
    end = size if stop is None else min(stop, size)
    if start >= size or end <= start:
        return problem_response(
            416,
            "range-not-satisfiable",
            "Range not satisfiable",
            f"the response has {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


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
            stream = live.stream
            if stream is not None and not live.run.finished:
                return await _join(request, services, live, stream, wait)
            services.driver.hold(live)
            try:
                answer = await _wait_live(request, services, live, prefer, deadline)
            finally:
                services.driver.release(live)
            if answer is not None:
                return answer
            continue
        if state.response is not None:
            return await answer_final(
                request, services, run_id, state.route, state.response, ranged=True
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _pending(request, run_id, prefer, state.status)
        if services.driver.get(run_id) is not None:
            continue  # resumed while the store was read
        if state.status == RunStatus.RUNNING.value and not services.store.exclusive:
            mirrored = await _join_elsewhere(request, services, state.route, run_id, wait)
            if mirrored is not None:
                return mirrored
        resumed = services.driver.watch(run_id)  # suspended in the store: wait until due
        try:
            async with asyncio.timeout(remaining):
                await resumed.wait()
        except TimeoutError:
            return _pending(request, run_id, prefer, state.status)


async def _join(
    request: web.BaseRequest, services: Services, live: LiveRun, stream: Stream, wait: float
) -> web.StreamResponse:
    """A late joiner of a run whose response is streaming here."""
    services.driver.hold(live)
    try:
        return await _follow_late(request, services, live.run.route.name, stream, wait)
    finally:
        services.driver.release(live)


async def _join_elsewhere(
    request: web.BaseRequest, services: Services, route_name: str, run_id: str, wait: float
) -> web.StreamResponse | None:
    """A late joiner of a run streaming on another node: followed through the store
    (`engine/mirror.py`); None when no body began streaming yet."""
    route = services.driver.routes.get(route_name)
    if route is None:
        return None
    mirrors = services.driver.mirrors
    stream = await mirrors.follow(run_id, route.settings.max_response)
    if stream is None:
        return None
    try:
        return await _follow_late(request, services, route_name, stream, wait)
    finally:
        mirrors.leave(run_id)


async def _follow_late(
    request: web.BaseRequest, services: Services, route: str, stream: Stream, wait: float
) -> web.StreamResponse:
    """The bytes so far at once, then live to the end; `Last-Event-ID` starts after that
    event (SSE). 410 when what came first was not kept."""
    run_id = stream.run_id
    if stream.over_cap:
        raise ResponseNotKept(
            "the response streaming now passed its route's max_response: what came first "
            "is not kept for a client that joins late",
            run_id=run_id,
        )
    how = Follow(
        route,
        run_id,
        result_url(request, services, run_id),
        hold=wait,
        last_event_id=request.headers.get("Last-Event-ID"),
    )
    return await held.follow(request, stream, how)


async def delete_result(request: web.BaseRequest, services: Services, run_id: str) -> web.Response:
    """Stop a run through its result URL: cancelled as by an operator, its streams end."""
    _check(request, services, run_id)
    await services.driver.cancel(run_id)
    return web.json_response({"run_id": run_id, "status": RunStatus.CANCELLED.value})


async def _wait_live(
    request: web.BaseRequest, services: Services, live: LiveRun, prefer: Prefer, deadline: float
) -> web.StreamResponse | None:
    """The result of a run live here, or 202 at the deadline; None if it left memory."""
    run_id = live.run.run_id
    while services.driver.get(run_id) is live:
        changed = live.changed()
        if live.run.finished and live.run.response is not None:
            if live.final_commit is not None:  # what a result URL shows must survive a crash
                await asyncio.shield(live.final_commit)
            route = live.run.route.name
            return await answer_final(
                request, services, run_id, route, live.run.response, ranged=True
            )
        if live.stream is not None:
            return None  # an attempt began streaming: join it
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
