"""RFC 9457 problem+json: the one place a ProblemError becomes an HTTP response.

Used as an aiohttp middleware on the admin listener, and through `listeners.guard` on the
ingress and the sidecar, so handlers just raise.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import metrics
from gateway.errors import (
    CONTENT_TYPE,
    ProblemError,
    StoreRejected,
    StoreUnavailable,
    problem_body,
)

log = logging.getLogger("gateway.http.problems")


def problem_response(
    status: int,
    type_: str,
    title: str,
    detail: str,
    run_id: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    return web.Response(
        status=status,
        body=problem_body(status, type_, title, detail, run_id, **extra),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


def from_error(err: ProblemError) -> web.Response:
    retry_after = err.extra.get("retry_after")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return problem_response(
        err.status, err.type, err.title, err.detail, err.run_id, headers=headers, **err.extra
    )


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ProblemError, aiohttp's own HTTP errors and store faults as problem+json."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - `answer` re-raises what it does not answer
        return answer(request, exc)


def answer(request: web.BaseRequest, exc: Exception) -> web.StreamResponse:
    """The problem+json response for `exc`; re-raises anything else, and HTTP redirects."""
    if isinstance(exc, ProblemError):
        metrics.child(metrics.REJECTED, str(exc.status)).inc()
        return from_error(exc)
    if isinstance(exc, StoreUnavailable):
        metrics.child(metrics.REJECTED, "503").inc()
        log.warning("storage unavailable while serving %s: %s", request.path, exc)
        return problem_response(
            503, "store-unavailable", "Storage unavailable", str(exc), headers={"Retry-After": "1"}
        )
    if isinstance(exc, StoreRejected):  # a write awaited (a sync step, a run's creation)
        metrics.child(metrics.REJECTED, "500").inc()
        return problem_response(500, "result-not-stored", "Result not stored", str(exc))
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        metrics.child(metrics.REJECTED, str(exc.status)).inc()
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return problem_response(
            exc.status, f"http-{exc.status}", exc.reason, exc.text or exc.reason, headers=headers
        )
    raise exc
