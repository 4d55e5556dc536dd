"""Events: `POST /v1/events` on the admin listener wakes the runs waiting for them.

Checked whole before anything is stored, then handed to the driver, which stores it and
completes the waits it matches in one store transaction (`engine/waits.py`).
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
from aiohttp import web

from gateway import metrics
from gateway.engine.tokens import new_run_id
from gateway.errors import BadRequest
from gateway.http import listeners
from gateway.http.services import SERVICES
from step_protocol import wire

MAX_EVENT: Final = 1024 * 1024
"""Largest body of `POST /v1/events`, in bytes."""
MAX_ID: Final = 255
"""Longest event id, in characters (names: `wire.MAX_EVENT_NAME`, as a wait's)."""


def _event(body: Any) -> tuple[str, Any, str | None]:
    """(name, data, id or None) of a valid event body; 400 otherwise."""
    if not isinstance(body, dict):
        raise BadRequest('body must be {"name": …, "data": {…}, "id": optional}')
    name, data, event_id = body.get("name"), body.get("data", {}), body.get("id")
    try:
        name = wire.check_event_name(name)
    except ValueError as exc:
        raise BadRequest(f'"name": {exc}') from None
    if not isinstance(data, dict):
        raise BadRequest('"data" must be a JSON object')
    if event_id is not None and (
        not isinstance(event_id, str)
        or not event_id
        or len(event_id) > MAX_ID
        or "\x00" in event_id
    ):
        raise BadRequest(f'"id" must be a string of 1 to {MAX_ID} characters, without U+0000')
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
    added = await services.driver.post_event(event_id, name, orjson.dumps(data), time.time())
    if not added.new:
        metrics.child(metrics.EVENTS, "duplicate").inc()
        return web.json_response({"id": event_id, "duplicate": True, "matched": 0})
    metrics.child(metrics.EVENTS, "received").inc()
    if added.completed:
        metrics.EVENTS_MATCHED.inc(len(added.completed))
    return web.json_response({"id": event_id, "matched": len(added.completed)}, status=202)
