"""Public listener: matches a route, admits a durable request into a run, answers the client.

Never waits on storage on the happy path: the run's record is queued, and the first
attempt's final response streams straight into the held connection.
"""

from __future__ import annotations

import asyncio
import random
import time

from aiohttp import web

from gateway import delivery, metrics, proxy
from gateway.config import RouteConfig
from gateway.delivery import Delivery, Prefer
from gateway.driver import ClientSink, LiveRun
from gateway.errors import BodyTooLarge, RouteNotFound
from gateway.headers import traceparent_for, upstream_request_headers
from gateway.limits import Limits, limit_key
from gateway.results import replay, result_url
from gateway.services import SERVICES
from gateway.store import StoredRequest
from step_protocol import wire

_rng = random.Random()


async def handle(request: web.Request) -> web.StreamResponse:
    """Every ingress request that is not a result URL."""
    start = time.perf_counter()
    services = request.app[SERVICES]
    table = services.routes
    route = table.match(request.method, request.path)
    if route is None:
        allowed = table.allowed_methods(request.path)
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
        raise RouteNotFound(f"no route matches {request.method} {request.path}")
    limits = services.limits
    _check_rate(request, route, limits)
    if not route.durable:
        metrics.REQUESTS.labels(route.name, "plain").inc()
        return await proxy.forward(request, route, services.session)
    metrics.REQUESTS.labels(route.name, "durable").inc()
    body = await _read_body(request, route.settings.max_body)
    stored = StoredRequest(request.method, request.path_qs, _upstream_headers(request), body)
    key = ""
    if route.concurrency is not None:
        key = limit_key(route.concurrency.key, request.headers, request.query, request.remote)
    live = services.driver.admit(route, stored, limit_key=key)
    metrics.OVERHEAD.labels(route.name).observe(time.perf_counter() - start)
    return await _answer(request, route, live)


def _check_rate(request: web.Request, route: RouteConfig, limits: Limits) -> None:
    limiter = limits.rate.get(route.name)
    if limiter is None or route.rate_limit is None:
        return
    key = limit_key(route.rate_limit.key, request.headers, request.query, request.remote)
    wait = limiter.check(key, time.monotonic())
    if wait > 0:
        raise _TooManyRequests(f"rate limit of route {route.name!r} exceeded", wait)


class _TooManyRequests(web.HTTPTooManyRequests):
    def __init__(self, detail: str, wait: float) -> None:
        super().__init__(text=detail, headers={"Retry-After": str(max(1, int(wait + 0.999)))})


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused with 413 past the route's max_body."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body is larger than max_body ({limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than max_body ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _upstream_headers(request: web.Request) -> list[tuple[str, str]]:
    return upstream_request_headers(
        request.headers,
        client_ip=request.remote,
        scheme=request.scheme,
        host=request.host,
        traceparent=traceparent_for(request.headers.get("traceparent"), _rng),
    )


async def _answer(request: web.Request, route: RouteConfig, live: LiveRun) -> web.StreamResponse:
    """Hold the client while the wait fits the budget; else 303 or 202 to the result URL."""
    prefer = delivery.parse_prefer(request.headers.getall("Prefer", []))
    run = live.run
    if prefer.respond_async:
        metrics.DELIVERIES.labels(route.name, Delivery.ACCEPTED.value).inc()
        return _to_result(request, live, 202, prefer, honoured_wait=False)
    budget = delivery.hold_budget(prefer, route.settings.hold)
    sink = ClientSink(request)
    live.sink = sink
    began = time.monotonic()
    while True:
        changed = live.changed()
        if sink.response is not None:  # an attempt claimed the connection and streams into it
            await sink.done
            mode = "direct" if run.attempt == 1 else "held"
            metrics.DELIVERIES.labels(route.name, mode).inc()
            return sink.response
        if run.finished and run.response is not None:
            live.sink = None
            metrics.DELIVERIES.labels(route.name, "held").inc()
            return replay(run.response)
        elapsed = time.monotonic() - began
        wake_in = run.wake_at - time.time() if run.wake_at is not None else None
        stopping = not request.app[SERVICES].driver.accepting
        if stopping or delivery.choose(prefer, elapsed, budget, wake_in) is Delivery.REDIRECT:
            live.sink = None
            metrics.DELIVERIES.labels(route.name, Delivery.REDIRECT.value).inc()
            return _to_result(request, live, 303, prefer, honoured_wait=prefer.wait is not None)
        try:
            async with asyncio.timeout(budget - elapsed):
                await changed.wait()
        except TimeoutError:
            pass


def _to_result(
    request: web.Request, live: LiveRun, status: int, prefer: Prefer, *, honoured_wait: bool
) -> web.Response:
    run_id = live.run.run_id
    location = result_url(request, run_id)
    headers = {"Location": location, wire.RUN_ID: run_id}
    if status == 202:
        headers["Retry-After"] = "1"
    applied = delivery.preference_applied(
        prefer, honoured_async=status == 202, honoured_wait=honoured_wait
    )
    if applied:
        headers["Preference-Applied"] = applied
    body = {"run_id": run_id, "status": live.run.status.value, "result_url": location}
    return web.json_response(body, status=status, headers=headers)
