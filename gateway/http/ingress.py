"""Public listener: matches a route, admits a durable request into a run, answers the client.

Never waits on storage on the happy path: the run's record is queued, and the first
attempt's final response streams straight into the held connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

from aiohttp import web

from gateway import metrics
from gateway.config import RouteConfig
from gateway.engine.changes import until_changed
from gateway.engine.limits import Limits, limit_key
from gateway.engine.live import LiveRun
from gateway.errors import (
    BadRequest,
    IdempotencyMismatch,
    RouteNotFound,
    Unavailable,
)
from gateway.http import delivery, held, idempotency, listeners, paths, proxy, results
from gateway.http.delivery import Delivery, Prefer
from gateway.http.results import replay, result_url
from gateway.http.services import Services
from gateway.store import IdempotencyKey, StoredRequest
from step_protocol import wire

_RESULT_METHODS = frozenset({"GET", "HEAD", "DELETE"})
"""What a result URL answers: reads, and DELETE, which stops its run."""
_STATUS_METHODS = frozenset({"GET", "HEAD"})
"""What a status URL answers."""


def listener(services: Services) -> listeners.Handler:
    """The ingress's one handler, for aiohttp's low-level server: a result URL, or a route.

    No `web.Application`: its router, match info and response hooks cost about 30k
    instructions a request, 16% of what aiohttp spends on one, and the ingress routes
    requests itself (`RouteTable`).
    """

    async def serve(request: web.BaseRequest) -> web.StreamResponse:
        target = Target.of(request)
        found = results.target(listeners.segments(request, results.PREFIX, target.path))
        if found is not None:
            run_id, whole = found
            allowed = _RESULT_METHODS if whole else _STATUS_METHODS
            if request.method not in allowed:  # e.g. `curl -L -X POST` after a 303
                raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
            if request.method == "DELETE":
                return await results.delete_result(request, services, run_id)
            if whole:
                return await results.get_result(request, services, run_id)
            return await results.get_status(request, services, run_id)
        return await handle(request, services, target)

    return listeners.guard(serve)


class Target(NamedTuple):
    """A request's path as the ingress matches it and sends it upstream (`paths.clean`)."""

    path_qs: str
    """The path without dot segments, still percent-encoded, and the query as it came."""
    path: str
    """That path decoded but for `%2F`: what routes are matched against."""

    @classmethod
    def of(cls, request: web.BaseRequest) -> Target:
        url = request.rel_url
        forwarded, matched = paths.clean(url.raw_path)
        query = url.raw_query_string
        return cls(f"{forwarded}?{query}" if query else forwarded, matched)


async def handle(
    request: web.BaseRequest, services: Services, target: Target
) -> web.StreamResponse:
    """Every ingress request that is not a result URL."""
    start = time.perf_counter()
    table = services.routes
    path = target.path
    route = table.match(request.method, path)
    if route is None:
        allowed = table.allowed_methods(path)
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
        raise RouteNotFound(f"no route matches {request.method} {path}")
    limits = services.limits
    _check_rate(request, route, limits)
    if not route.durable:
        metrics.child(metrics.REQUESTS, route.name, "plain").inc()
        await listeners.expect_continue(request)
        return await proxy.forward(request, route, services.session, target.path_qs)
    metrics.child(metrics.REQUESTS, route.name, "durable").inc()
    writer = services.writer
    if not writer.healthy or writer.saturated:
        raise Unavailable(
            f"storage cannot take new runs now ({writer.last_error or 'write queue full'})",
            retry_after=1,
        )
    body = await listeners.read_whole(request, route.settings.max_body, "max_body")
    idem = _idempotency(request, route, target.path_qs, body)
    if idem is not None:
        existing = await _existing_run(request, services, route, idem)
        if existing is not None:
            return existing
    stored = StoredRequest(request.method, target.path_qs, proxy.stored_headers(request), body)
    key = ""
    if route.concurrency is not None:
        key = limit_key(route.concurrency.key, request.headers, request.query, request.remote)
    if idem is not None and not services.store.exclusive:
        admitted = await services.driver.admit_keyed(route, stored, idem, limit_key=key)
        if not isinstance(admitted, LiveRun):  # a duplicate on another node won the key
            existing = await _existing_run(request, services, route, idem)
            if existing is None:  # purged in between: extremely unlikely, but say so
                raise Unavailable("the idempotency key's run just went; retry", retry_after=1)
            return existing
        live = admitted
    else:
        live = services.driver.admit(route, stored, limit_key=key, idempotency=idem)
    metrics.child(metrics.OVERHEAD, route.name).observe(time.perf_counter() - start)
    return await _answer(request, services, route, live)


def _idempotency(
    request: web.BaseRequest, route: RouteConfig, path_qs: str, body: bytes
) -> IdempotencyKey | None:
    """The request's key in its caller's scope, and its fingerprint, when the route uses
    Idempotency-Key."""
    mode = route.settings.idempotency
    if mode == "off":
        return None
    raw = request.headers.get(idempotency.HEADER)
    if raw is None:
        if mode == "required":
            raise BadRequest(f"route {route.name!r} requires an {idempotency.HEADER} header")
        return None
    key = idempotency.parse_key(raw)
    scope = idempotency.scope(
        route.settings.idempotency_scope, request.headers, request.query, request.remote
    )
    fingerprint = idempotency.fingerprint(request.method, path_qs, body)
    return IdempotencyKey(idempotency.scoped(scope, key), fingerprint)


async def _existing_run(
    request: web.BaseRequest, services: Services, route: RouteConfig, idem: IdempotencyKey
) -> web.StreamResponse | None:
    """Attach to the run a key already belongs to: replay it, or wait on it; 422 on misuse."""
    keyed = await services.view.keyed(route.name, idem.key)
    if keyed is None:
        return None
    if keyed.fingerprint is not None and keyed.fingerprint != idem.fingerprint:
        raise _mismatch(idempotency.unscoped(idem.key), keyed.run_id)
    if keyed.live is not None:
        return await _answer(request, services, route, keyed.live, attached=True)
    if keyed.response is None:  # unfinished, owned elsewhere: its result URL waits
        return _to_result(request, services, keyed.run_id, 303, Prefer(), honoured_wait=False)
    return await results.answer_final(
        request, services, keyed.run_id, route.name, keyed.response, extra=_REPLAYED
    )


def _mismatch(key: str, run_id: str) -> IdempotencyMismatch:
    return IdempotencyMismatch(
        f"{idempotency.HEADER} {key!r} was first used with a different request "
        "(method, path, query or body)",
        run_id=run_id,
    )


_REPLAYED = ((idempotency.REPLAYED, "true"),)


def _check_rate(request: web.BaseRequest, route: RouteConfig, limits: Limits) -> None:
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


async def _answer(
    request: web.BaseRequest,
    services: Services,
    route: RouteConfig,
    live: LiveRun,
    *,
    attached: bool = False,
) -> web.StreamResponse:
    """Hold the client while the wait fits the budget; else 303 or 202 to the result URL.

    The original client follows the response as an attempt streams it (across retries,
    see `held.follow`); an attached duplicate only ever gets the final response.
    """
    prefer = delivery.parse_prefer(request.headers.getall("Prefer", []))
    run = live.run
    run_id = run.run_id
    if prefer.respond_async:
        metrics.child(metrics.DELIVERIES, route.name, Delivery.ACCEPTED.value).inc()
        await _committed(live)
        return _to_result(request, services, run_id, 202, prefer, honoured_wait=False)
    budget = delivery.hold_budget(prefer, route.settings.hold)
    services.driver.hold(live)
    try:
        return await _hold(request, services, route, live, prefer, budget, attached)
    finally:
        services.driver.release(live)


async def _hold(
    request: web.BaseRequest,
    services: Services,
    route: RouteConfig,
    live: LiveRun,
    prefer: Prefer,
    budget: float,
    attached: bool,
) -> web.StreamResponse:
    """Wait on the run for the original client, which follows the response as soon as an
    attempt streams it, or for an attached duplicate, which gets the final response."""
    run = live.run
    run_id = run.run_id
    began = time.monotonic()
    while True:
        stream = live.stream
        if stream is not None and not attached:
            # The original client answered at its first attempt is a direct delivery,
            # whether the body streamed into it or (short) was answered whole.
            mode = "direct" if stream.attempt == 1 and stream.epoch == 0 else "held"
            metrics.child(metrics.DELIVERIES, route.name, mode).inc()
            result = result_url(request, services, run_id)
            how = held.Follow(route.name, run_id, result, hold=budget)
            return await held.follow(request, stream, how)
        if run.finished and run.response is not None:
            mode = "direct" if not attached and run.attempt == 1 else "held"
            metrics.child(metrics.DELIVERIES, route.name, mode).inc()
            if not attached:
                return replay(run.response, result_url(request, services, run_id))
            if live.final_commit is not None:  # a replay must be what the store will keep
                await asyncio.shield(live.final_commit)
            return await results.answer_final(
                request, services, run_id, route.name, run.response, extra=_REPLAYED
            )
        elapsed = time.monotonic() - began
        wake_in = run.wake_at - time.time() if run.wake_at is not None else None
        stopping = not services.driver.accepting or live.lost  # lost: the result URL
        if stopping or delivery.choose(prefer, elapsed, budget, wake_in) is Delivery.REDIRECT:
            metrics.child(metrics.DELIVERIES, route.name, Delivery.REDIRECT.value).inc()
            await _committed(live)
            return _to_result(
                request, services, run_id, 303, prefer, honoured_wait=prefer.wait is not None
            )
        await until_changed(live.changed(), budget - elapsed)


COMMIT_WAIT = 5.0
"""Longest a client waits for its run's record to commit before a result URL; past it
(the database is down) a 503 instead of a connection that hangs until it is back."""


async def _committed(live: LiveRun) -> None:
    """A result URL is a promise: hand one out only once the run's record is committed."""
    if live.created is None or live.created.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(live.created), COMMIT_WAIT)
    except TimeoutError:
        raise Unavailable(
            f"storage did not commit the run within {COMMIT_WAIT:g}s; it runs once storage"
            " is back: retry with the same Idempotency-Key to attach to it",
            retry_after=1,
            run_id=live.run.run_id,
        ) from None


def _to_result(
    request: web.BaseRequest,
    services: Services,
    run_id: str,
    status: int,
    prefer: Prefer,
    *,
    honoured_wait: bool,
) -> web.Response:
    location = result_url(request, services, run_id)
    headers = {"Location": location, wire.RUN_ID: run_id, wire.RESULT: location}
    if status == 202:
        headers["Retry-After"] = "1"
    applied = delivery.preference_applied(
        prefer, honoured_async=status == 202, honoured_wait=honoured_wait
    )
    if applied:
        headers["Preference-Applied"] = applied
    body = {"run_id": run_id, "result_url": location}
    return web.json_response(body, status=status, headers=headers)
