"""Sidecar listener: the backend's API for recording steps of the run it is serving.

Checks the per-attempt bearer token, then reports step writes to the driver, which owns
the run. Answers from memory for live runs; reads the store only for runs not live here.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway import suspensions
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    NotFound,
    StepConflict,
    Unauthorized,
)
from gateway.runs import StepResult, steps_envelope
from gateway.services import SERVICES
from step_protocol import wire

_JSON = "application/json"
_TOO_LARGE = {
    StepResult.OUTPUT_TOO_LARGE: "step output is larger than max_step_output",
    StepResult.STATE_TOO_LARGE: "all step outputs together would pass max_run_state",
    StepResult.TOO_MANY_STEPS: "the run already has max_steps steps",
}


def routes() -> web.RouteTableDef:
    table = web.RouteTableDef()
    table.get("/v1/runs/{run_id}/steps")(list_steps)
    table.get("/v1/runs/{run_id}/steps/{step_id}")(get_step)
    table.put("/v1/runs/{run_id}/steps/{step_id}")(put_step)
    table.post("/v1/runs/{run_id}/steps/{step_id}/sleep")(sleep)
    table.post("/v1/runs/{run_id}/steps/{step_id}/wait")(wait)
    return table


def _authorize(request: web.Request) -> tuple[str, int]:
    """The run id and attempt the bearer token opens; 401 without one, 403 if wrong."""
    run_id = request.match_info["run_id"]
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the run's Durable-Token as `Authorization: Bearer …`")
    attempt = request.app[SERVICES].tokens.check_attempt_token(run_id, token.strip())
    if attempt is None:
        raise Forbidden("this token does not open this run", run_id=run_id)
    return run_id, attempt


def _step_id(request: web.Request) -> str:
    step_id = request.match_info["step_id"]
    if not step_id or len(step_id) > wire.MAX_STEP_ID:
        raise BadRequest(f"a step id is 1 to {wire.MAX_STEP_ID} characters")
    return step_id


async def _steps(request: web.Request, run_id: str) -> dict[str, bytes]:
    live = request.app[SERVICES].driver.get(run_id)
    if live is not None:
        return live.run.steps
    if await request.app[SERVICES].store.get_run(run_id) is None:
        raise NotFound("no such run", run_id=run_id)
    return await request.app[SERVICES].store.load_steps(run_id)


async def list_steps(request: web.Request) -> web.Response:
    run_id, _ = _authorize(request)
    body = steps_envelope(await _steps(request, run_id))
    return web.Response(body=body, content_type=_JSON)


async def get_step(request: web.Request) -> web.Response:
    run_id, _ = _authorize(request)
    step_id = _step_id(request)
    output = (await _steps(request, run_id)).get(step_id)
    if output is None:
        raise NotFound(f"step {step_id!r} has not completed", run_id=run_id)
    return web.Response(body=b'{"output":' + output + b"}", content_type=_JSON)


async def put_step(request: web.Request) -> web.Response:
    run_id, attempt = _authorize(request)
    step_id = _step_id(request)
    driver = request.app[SERVICES].driver
    live = driver.get(run_id)
    limit = (live.run.route.settings.max_step_output if live else 4 * 1024 * 1024) + 1024
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge("step output is larger than max_step_output", run_id=run_id)
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}", run_id=run_id) from None
    if not isinstance(body, dict) or ("output" in body) == ("error" in body):
        raise BadRequest('body must be {"output": …} or {"error": {"message": …}}', run_id=run_id)
    if "error" in body:
        error = body["error"]
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str):
            raise BadRequest('"error" must be {"message": "…"}', run_id=run_id)
        driver.step_error(run_id, attempt, step_id, message)
        return web.Response(body=b'{"recorded":"error"}', content_type=_JSON)
    output = orjson.dumps(body["output"], option=orjson.OPT_SORT_KEYS)
    sync = request.query.get("durable") == "sync"
    result = await driver.put_step(run_id, attempt, step_id, output, sync)
    if result is StepResult.CREATED:
        return web.Response(status=201, body=b'{"created":true}', content_type=_JSON)
    if result is StepResult.SAME:
        return web.Response(status=200, body=b'{"created":false}', content_type=_JSON)
    if result is StepResult.CONFLICT:
        raise StepConflict(
            f"step {step_id!r} already completed with a different output", run_id=run_id
        )
    raise BodyTooLarge(_TOO_LARGE[result], run_id=run_id)


async def _json_object(request: web.Request, run_id: str) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}", run_id=run_id) from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", run_id=run_id)
    return body


def _seconds(value: Any, name: str, run_id: str) -> float:
    """A duration given as seconds or as text like `30s`, `5m`, `1h`."""
    try:
        return wire.parse_duration(value)
    except ValueError as exc:
        raise BadRequest(f'"{name}": {exc}', run_id=run_id) from None


def _answer(answer: suspensions.Answer) -> web.Response:
    return web.Response(status=200 if answer.done else 202, body=answer.body, content_type=_JSON)


async def sleep(request: web.Request) -> web.Response:
    run_id, attempt = _authorize(request)
    step_id = _step_id(request)
    body = await _json_object(request, run_id)
    now = time.time()
    if ("seconds" in body) == ("until" in body):
        raise BadRequest('send {"seconds": N} or {"until": "<RFC 3339>"}', run_id=run_id)
    if "seconds" in body:
        wake_at = now + _seconds(body["seconds"], "seconds", run_id)
    else:
        try:
            wake_at = wire.parse_timestamp(str(body["until"])).timestamp()
        except ValueError as exc:
            raise BadRequest(f'"until" must be an RFC 3339 time: {exc}', run_id=run_id) from None
    driver = request.app[SERVICES].driver
    return _answer(suspensions.sleep(driver, run_id, attempt, step_id, wake_at, now))


async def wait(request: web.Request) -> web.Response:
    run_id, attempt = _authorize(request)
    step_id = _step_id(request)
    body = await _json_object(request, run_id)
    event, match = body.get("event"), body.get("match", {})
    if not isinstance(event, str) or not event:
        raise BadRequest('"event" must be a non-empty string', run_id=run_id)
    if not isinstance(match, dict):
        raise BadRequest('"match" must map dotted paths to values', run_id=run_id)
    timeout = body.get("timeout")
    lookback = body.get("lookback")
    services = request.app[SERVICES]
    answer = await suspensions.wait(
        services.driver,
        services.store,
        run_id,
        attempt,
        step_id,
        event=event,
        match=match,
        timeout_in=None if timeout is None else _seconds(timeout, "timeout", run_id),
        lookback=None if lookback is None else _seconds(lookback, "lookback", run_id),
        now=time.time(),
    )
    return _answer(answer)
