"""Admin listener: Prometheus metrics, health and readiness, events, configuration reload.

Loopback by default; when `security.admin_token` is set, everything but the health
checks needs it as a bearer token.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from gateway import metrics
from gateway.errors import ConfigError, Unauthorized
from gateway.http import events_api as events
from gateway.http import openapi
from gateway.http.problems import problem_response
from gateway.http.services import SERVICES

_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", openapi.PATH})
"""The health checks, the dashboard page and its static files, and the API's description:
none of them holds data."""


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SERVICES].config.security.admin_token
    if token and request.path not in _OPEN_PATHS and not request.path.startswith("/static/"):
        scheme, _, sent = request.headers.get("Authorization", "").strip().partition(" ")
        # RFC 9110: the scheme is case-insensitive; a bare token is not a credential.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            sent.strip().encode(), token.encode()
        ):
            raise Unauthorized("the admin API needs `Authorization: Bearer <admin_token>`")
    return await handler(request)


async def get_metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    metrics.STORE_QUEUE.set(services.writer.depth)
    pending = await services.store.count_pending()
    for kind in ("sleep", "wait"):
        metrics.child(metrics.SUSPENDED, kind).set(pending.get(kind, 0))
    metrics.TIMERS.set(await services.store.count_timers())
    if "application/openmetrics-text" in request.headers.get("Accept", ""):
        # What Prometheus asks for first: the format that carries exemplars (trace ids).
        body = openmetrics.generate_latest(REGISTRY)  # type: ignore[no-untyped-call]
        return web.Response(body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST})
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """200 once all three listeners are bound."""
    if not request.app[SERVICES].ready:
        why = "the listeners are not all bound yet"
        return problem_response(503, "starting", "Starting", why, headers={"Retry-After": "1"})
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while the gateway admits new durable runs; else a 503 problem saying why
    (starting, draining, durable writes failing, the write queue full).

    Built here, not raised: a probe's 503 is no rejected request for the metrics.
    """
    services = request.app[SERVICES]
    writer = services.writer
    why = None
    if not services.ready:
        why = "the gateway is starting"
    elif not services.driver.accepting:
        why = "the gateway is shutting down"
    elif not writer.healthy:
        why = f"durable writes are failing: {writer.last_error}"
    elif writer.saturated:
        why = f"the store's write queue is full ({writer.depth} writes waiting)"
    if why is not None:
        return problem_response(503, "not-ready", "Not ready", why, headers={"Retry-After": "1"})
    return web.json_response({"status": "ready", "queued_writes": writer.depth})


async def reload(request: web.Request) -> web.Response:
    """Reload the configuration file the gateway started with, as SIGHUP does: 200 with
    what changed, or 422 with the loader's `file:line key.path: message`."""
    try:
        done = await request.app[SERVICES].reload()
    except ConfigError as err:
        return problem_response(422, "config-rejected", "Configuration rejected", str(err))
    return web.json_response(done.summary())


def routes() -> web.RouteTableDef:
    table = web.RouteTableDef()
    table.get("/metrics")(get_metrics)
    table.get("/healthz")(healthz)
    table.get("/readyz")(readyz)
    table.post("/v1/events")(events.post_event)
    table.get(openapi.PATH)(openapi.admin_document)
    table.post("/v1/admin/reload")(reload)
    return table
