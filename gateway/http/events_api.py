"""Events: `POST /v1/events` on the admin listener wakes the runs waiting for them.

Checked whole before anything is stored. Storing an event and completing the waits it
matches are one store transaction, so a stored event has always woken its runs, even
if the gateway dies before it answers; the driver and the scheduler hear of it after.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Final

import orjson
from aiohttp import web

from gateway import metrics
from gateway.engine.tokens import new_run_id
from gateway.errors import BadRequest
from gateway.http import listeners
from gateway.http.services import SERVICES

MAX_EVENT: Final = 1024 * 1024
"""Largest body of `POST /v1/events`, in bytes."""
MAX_NAME: Final = 255
"""Longest event name and event id, in characters (a wait names its event too)."""

TEST_CRASH_ENV: Final = "DURABLE_TEST_CRASH_AFTER_EVENT"
"""Test-only fault point: `1` kills the process (SIGKILL) right after an event's
transaction commits, before the engine hears of it or the sender gets an answer.
Never set it in production."""
_CRASH_AFTER_EVENT: Final = os.environ.get(TEST_CRASH_ENV, "") == "1"


def _event(body: Any) -> tuple[str, Any, str | None]:
    """(name, data, id or None) of a valid event body; 400 otherwise."""
    if not isinstance(body, dict):
        raise BadRequest('body must be {"name": …, "data": {…}, "id": optional}')
    name, data, event_id = body.get("name"), body.get("data", {}), body.get("id")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise BadRequest(f'"name" must be a string of 1 to {MAX_NAME} characters')
    if not isinstance(data, dict):
        raise BadRequest('"data" must be a JSON object')
    if event_id is not None and (
        not isinstance(event_id, str) or not event_id or len(event_id) > MAX_NAME
    ):
        raise BadRequest(f'"id" must be a string of 1 to {MAX_NAME} characters')
    return name, data, event_id


async def post_event(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    raw = await listeners.read_whole(request, MAX_EVENT, "an event's limit")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    name, data, event_id = _event(body)
    if event_id is None:
        event_id = new_run_id()
    now = time.time()
    await services.writer.flush()  # every wait registered before now is in the store
    added = await services.store.add_event(event_id, name, orjson.dumps(data), now)
    if _CRASH_AFTER_EVENT:
        os.kill(os.getpid(), signal.SIGKILL)
    if not added.new:
        metrics.child(metrics.EVENTS, "duplicate").inc()
        return web.json_response({"id": event_id, "duplicate": True, "matched": 0})
    metrics.child(metrics.EVENTS, "received").inc()
    for wait in added.completed:
        services.driver.wait_completed(wait.run_id, wait.step_id, wait.output)
    if added.completed:
        metrics.EVENTS_MATCHED.inc(len(added.completed))
        services.scheduler.poke()
    return web.json_response({"id": event_id, "matched": len(added.completed)}, status=202)
