"""Events: `POST /v1/events` on the admin listener wakes the runs waiting for them.

An event is stored first (its id de-duplicates), then every pending wait for its name
whose `match` fits is completed in the store, one transaction each, so two events can
never both complete one wait; the scheduler then re-invokes the woken runs.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from gateway import metrics
from gateway.engine.suspensions import first_match
from gateway.engine.tokens import new_run_id
from gateway.errors import BadRequest
from gateway.http.services import SERVICES
from step_protocol import wire

MAX_EVENT = 1024 * 1024


async def post_event(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if request.content_length is not None and request.content_length > MAX_EVENT:
        raise BadRequest(f"an event is at most {MAX_EVENT} bytes")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest('body must be {"name": …, "data": {…}, "id": optional}')
    name, data, event_id = body.get("name"), body.get("data"), body.get("id")
    try:
        name = wire.check_event_name(name)
    except ValueError as exc:
        raise BadRequest(f'"name": {exc}') from None
    if event_id is None:
        event_id = new_run_id()
    elif not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise BadRequest('"id" must be a string of 1 to 255 characters')
    now = time.time()
    if not await services.store.add_event(event_id, name, orjson.dumps(data), now):
        metrics.child(metrics.EVENTS, "duplicate").inc()
        return web.json_response({"id": event_id, "duplicate": True, "matched": 0})
    metrics.child(metrics.EVENTS, "received").inc()
    event = (wire.event_output(event_id, name, data, now),)
    await services.writer.flush()  # every wait registered before now is in the store
    matched = 0
    for wait in await services.store.waits_for(name):
        output = first_match(wait.match, event)
        if output is not None and await services.store.complete_wait(
            wait.run_id, wait.step_id, output, time.time()
        ):
            matched += 1
            services.driver.wait_completed(wait.run_id, wait.step_id, output)
    if matched:
        metrics.EVENTS_MATCHED.inc(matched)
        services.scheduler.poke()
    return web.json_response({"id": event_id, "matched": matched}, status=202)
