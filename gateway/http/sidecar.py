"""Sidecar listener: the backend's API for recording steps of the run it is serving.

Checks the per-attempt bearer token, then reports step writes to the driver, which owns
the run. Answers from memory for live runs; reads the store only for runs not live here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.engine.runs import StepResult, steps_envelope
from gateway.engine.suspensions import Answer
from gateway.engine.traces import NO_TIMING, StepTiming
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    NotFound,
    StaleAttempt,
    StepConflict,
    Unauthorized,
)
from gateway.http import listeners, openapi
from gateway.http.services import Services
from step_protocol import wire

_JSON = "application/json"
_TOO_LARGE = {
    StepResult.OUTPUT_TOO_LARGE: "step output is larger than max_step_output",
    StepResult.STATE_TOO_LARGE: "all step outputs together would pass max_run_state",
    StepResult.TOO_MANY_STEPS: "the run already has max_steps steps",
}


_PREFIX = "/v1/runs/"

_Handler = Callable[[web.BaseRequest, Services, str, str], Awaitable[web.Response]]


def listener(services: Services) -> listeners.Handler:
    """The sidecar's one handler, for aiohttp's low-level server.

    No `web.Application`, as on the ingress (`ingress.listener`): its router and a
    middleware cost about 40k instructions a call, and a 3-step request makes three.
    Paths are `/v1/runs/{run_id}/steps[/{step_id}[/sleep|/wait]]`.
    """

    leases = services.leases

    async def serve(request: web.BaseRequest) -> web.StreamResponse:
        found = _target(listeners.segments(request, _PREFIX))
        if found is None:
            if request.path == openapi.PATH:
                return _describe(request)
            raise web.HTTPNotFound()
        run_id, step_id, methods = found
        handler = methods.get(request.method)
        if handler is None:
            raise web.HTTPMethodNotAllowed(request.method, sorted(methods))
        if not leases.fresh():  # paused past its lease: it may have lost the run
            await leases.confirm()
        try:
            return await handler(request, services, run_id, step_id)
        except NotFound:
            if request.method == "GET" or await services.store.get_run(run_id) is None:
                raise
            # SPEC §5: once the run finished (or parked), its attempts' writes are stale.
            raise StaleAttempt(
                "the run is not running: it finished or is suspended", run_id=run_id
            ) from None

    return listeners.guard(serve)


def _describe(request: web.BaseRequest) -> web.Response:
    """`GET /openapi.json`: the sidecar's own document, needing no token."""
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    return openapi.response("sidecar")


def _target(parts: list[str] | None) -> tuple[str, str, dict[str, _Handler]] | None:
    """(run id, step id or "", handlers by method) for a path's segments after _PREFIX."""
    if parts is None or not 2 <= len(parts) <= 4 or not parts[0] or parts[1] != "steps":
        return None
    if len(parts) == 2:
        return parts[0], "", _ON_STEPS
    if not parts[2]:
        return None
    methods = _ON_STEP if len(parts) == 3 else _ON_ACTION.get(parts[3])
    return None if methods is None else (parts[0], parts[2], methods)


def _authorize(request: web.BaseRequest, services: Services, run_id: str) -> int:
    """The attempt the bearer token opens for this run; 401 without one, 403 if wrong."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the run's Durable-Token as `Authorization: Bearer …`")
    attempt = services.tokens.check_attempt_token(run_id, token.strip())
    if attempt is None:
        raise Forbidden("this token does not open this run", run_id=run_id)
    return attempt


def _check_step_id(step_id: str) -> None:
    # U+0000: PostgreSQL's text refuses it, so the write would be acknowledged, then fail.
    if not step_id or len(step_id) > wire.MAX_STEP_ID or "\x00" in step_id:
        raise BadRequest(f"a step id is 1 to {wire.MAX_STEP_ID} characters, without U+0000")


async def _steps(services: Services, run_id: str) -> dict[str, bytes]:
    steps = await services.view.steps(run_id)
    if steps is None:
        raise NotFound("no such run", run_id=run_id)
    return steps


async def list_steps(
    request: web.BaseRequest, services: Services, run_id: str, step_id: str
) -> web.Response:
    _authorize(request, services, run_id)
    body = steps_envelope(await _steps(services, run_id))
    return web.Response(body=body, content_type=_JSON)


async def get_step(
    request: web.BaseRequest, services: Services, run_id: str, step_id: str
) -> web.Response:
    _authorize(request, services, run_id)
    _check_step_id(step_id)
    output = (await _steps(services, run_id)).get(step_id)
    if output is None:
        raise NotFound(f"step {step_id!r} has not completed", run_id=run_id)
    return web.Response(body=b'{"output":' + output + b"}", content_type=_JSON)


async def put_step(
    request: web.BaseRequest, services: Services, run_id: str, step_id: str
) -> web.Response:
    attempt = _authorize(request, services, run_id)
    _check_step_id(step_id)
    durable = request.query.get("durable")
    if durable not in (None, "sync"):  # a typo must not quietly weaken the acknowledgement
        raise BadRequest(f"?durable= is `sync` or absent, not {durable!r}", run_id=run_id)
    driver = services.driver
    live = driver.get(run_id)
    limit = (live.run.route.settings.max_step_output if live else 4 * 1024 * 1024) + 1024
    raw = await listeners.read_whole(request, limit, "max_step_output", run_id)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}", run_id=run_id) from None
    if not isinstance(body, dict) or ("output" in body) == ("error" in body):
        raise BadRequest('body must be {"output": …} or {"error": {"message": …}}', run_id=run_id)
    timing = _timing(body, time.time(), run_id)
    if "error" in body:
        error = body["error"]
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str):
            raise BadRequest('"error" must be {"message": "…"}', run_id=run_id)
        driver.step_error(run_id, attempt, step_id, message, timing)
        return web.Response(body=b'{"recorded":"error"}', content_type=_JSON)
    output = orjson.dumps(body["output"], option=orjson.OPT_SORT_KEYS)
    sync = durable == "sync"
    result = await driver.put_step(run_id, attempt, step_id, output, sync, timing)
    if result is StepResult.CREATED:
        return web.Response(status=201, body=b'{"created":true}', content_type=_JSON)
    if result is StepResult.SAME:
        return web.Response(status=200, body=b'{"created":false}', content_type=_JSON)
    if result is StepResult.CONFLICT:
        raise StepConflict(
            f"step {step_id!r} already completed with a different output", run_id=run_id
        )
    raise BodyTooLarge(_TOO_LARGE[result], run_id=run_id)


MAX_STEP_AGE: Final = 30 * 86400
"""How long before now a step's `started_at` may be, in seconds, and the longest
`duration_ms` a backend may report (as seconds): past it, a value is a broken clock
or unit, not a step."""
MAX_CLOCK_SKEW: Final = 300
"""How far after the gateway's now a backend's `started_at` may be, in seconds: its
clock may run a little ahead of ours."""


def _timing(body: dict[str, Any], now: float, run_id: str) -> StepTiming:
    """A step write's optional timing: `started_at` (Unix seconds, or RFC 3339 with an
    offset) and `duration_ms`; null is the same as absent. A bad value is a 400 before
    anything is stored, so a backend learns of its broken clock instead of a wrong trace.
    """
    started, took = body.get("started_at"), body.get("duration_ms")
    if started is None and took is None:
        return NO_TIMING
    if isinstance(started, str):
        try:
            started = wire.parse_timestamp(started).timestamp()
        except ValueError as exc:
            raise BadRequest(f'"started_at": {exc}', run_id=run_id) from None
    elif started is not None and not _number(started):
        raise BadRequest(
            '"started_at" must be Unix seconds (a number) or an RFC 3339 time with an offset',
            run_id=run_id,
        )
    if started is not None and not now - MAX_STEP_AGE <= started <= now + MAX_CLOCK_SKEW:
        raise BadRequest(
            '"started_at" must be within the last 30 days (and at most 5 minutes ahead'
            " of the gateway's clock)",
            run_id=run_id,
        )
    if took is not None and (not _number(took) or not 0 <= took <= MAX_STEP_AGE * 1000):
        raise BadRequest(
            '"duration_ms" must be a number of milliseconds from 0 to 30 days', run_id=run_id
        )
    return StepTiming(
        None if started is None else float(started), None if took is None else float(took)
    )


def _number(value: Any) -> bool:
    """A finite JSON number: not a boolean, which Python counts as an int."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


async def _call(
    request: web.BaseRequest, services: Services, run_id: str, step_id: str
) -> tuple[int, dict[str, Any]]:
    """A sleep's or wait's attempt and JSON object body (at most the largest step output
    and 64 KiB)."""
    attempt = _authorize(request, services, run_id)
    _check_step_id(step_id)
    config = services.config
    largest = max((r.settings.max_step_output for r in config.routes), default=0)
    limit = max(largest, config.defaults.max_step_output) + 65536
    try:
        raw = await listeners.read_whole(request, limit, "a sidecar call's limit", run_id)
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}", run_id=run_id) from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", run_id=run_id)
    return attempt, body


def _seconds(value: Any, name: str, run_id: str) -> float:
    """A duration given as seconds or as text like `30s`, `5m`, `1h`, up to
    `wire.MAX_DURATION`: anything else is a 400 before the engine sees it."""
    try:
        return wire.parse_duration(value)
    except ValueError as exc:
        raise BadRequest(f'"{name}": {exc}', run_id=run_id) from None


def _until(value: Any, now: float, run_id: str) -> float:
    """A sleep's `until` as epoch seconds: RFC 3339, at most `wire.MAX_DURATION` ahead."""
    if not isinstance(value, str):
        raise BadRequest('"until" must be an RFC 3339 time as a string', run_id=run_id)
    try:
        return wire.wake_time(value, now)
    except ValueError as exc:
        raise BadRequest(f'"until": {exc}', run_id=run_id) from None


def _answer(answer: Answer) -> web.Response:
    return web.Response(status=200 if answer.done else 202, body=answer.body, content_type=_JSON)


async def sleep(
    request: web.BaseRequest, services: Services, run_id: str, step_id: str
) -> web.Response:
    attempt, body = await _call(request, services, run_id, step_id)
    now = time.time()
    if ("seconds" in body) == ("until" in body):
        raise BadRequest('send {"seconds": N} or {"until": "<RFC 3339>"}', run_id=run_id)
    if "seconds" in body:
        wake_at = now + _seconds(body["seconds"], "seconds", run_id)
    else:
        wake_at = _until(body["until"], now, run_id)
    return _answer(services.driver.sleep(run_id, attempt, step_id, wake_at, now))


async def wait(
    request: web.BaseRequest, services: Services, run_id: str, step_id: str
) -> web.Response:
    attempt, body = await _call(request, services, run_id, step_id)
    try:
        event = wire.check_event_name(body.get("event"))
    except ValueError as exc:
        raise BadRequest(f'"event": {exc}', run_id=run_id) from None
    try:
        match = wire.check_match(body.get("match", {}))
    except ValueError as exc:
        raise BadRequest(f'"match": {exc}', run_id=run_id) from None
    timeout = body.get("timeout")
    lookback = body.get("lookback")
    # Every value is checked before the engine stores the wait: a refused call leaves
    # nothing behind, so a corrected call on the same step id starts it afresh.
    timeout_in = None if timeout is None else _seconds(timeout, "timeout", run_id)
    lookback_s = None if lookback is None else _seconds(lookback, "lookback", run_id)
    answer = await services.driver.wait(
        run_id,
        attempt,
        step_id,
        event=event,
        match=match,
        timeout_in=timeout_in,
        lookback=lookback_s,
        now=time.time(),
    )
    return _answer(answer)


def routes() -> dict[str, frozenset[str]]:
    """Path templates this listener answers, with their methods, as its OpenAPI document
    names them (`openapi/sidecar.json`, checked against this by a test)."""
    base = _PREFIX + "{run_id}/steps"
    table = {base: _ON_STEPS, base + "/{step_id}": _ON_STEP}
    table |= {f"{base}/{{step_id}}/{action}": on for action, on in _ON_ACTION.items()}
    found = {path: frozenset(on) for path, on in table.items()}
    return found | {openapi.PATH: frozenset({"GET", "HEAD"})}


_ON_STEPS: dict[str, _Handler] = {"GET": list_steps, "HEAD": list_steps}
_ON_STEP: dict[str, _Handler] = {"GET": get_step, "HEAD": get_step, "PUT": put_step}
_ON_ACTION: dict[str, dict[str, _Handler]] = {"sleep": {"POST": sleep}, "wait": {"POST": wait}}
