"""The admin runs API: list and inspect runs, cancel and retry them.

Reads runs through the engine's run view; changes them only through the driver's
commands. Mounted on the admin listener behind its bearer token.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from aiohttp import web

from gateway import metrics
from gateway.engine.stream import Stream
from gateway.engine.traces import trace_of
from gateway.errors import BadRequest, NotFound
from gateway.http.run_steps import steps_view
from gateway.http.services import SERVICES
from gateway.store import BODY_TOO_LARGE, StoredResponse
from gateway.store.records import RunStatus

MAX_LIMIT = 500
RUN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a run id can be (the gateway makes them URL-safe); anything else is no run, found
without reading the store (PostgreSQL's text refuses some characters: U+0000)."""


def routes() -> web.RouteTableDef:
    table = web.RouteTableDef()
    table.get("/v1/runs")(list_runs)
    table.get("/v1/runs/{run_id}")(get_run)
    table.post("/v1/runs/{run_id}/cancel")(cancel)
    table.post("/v1/runs/{run_id}/retry")(retry)
    table.get("/v1/routes")(list_routes)
    return table


async def list_runs(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    query = request.query
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    status = query.get("status") or None
    if "\x00" in query.get("route", ""):
        raise BadRequest("route names hold no U+0000")
    if status is not None and status not in set(RunStatus):
        raise BadRequest(f"status must be one of {', '.join(RunStatus)}")
    try:
        runs, cursor = await services.store.list_runs(
            query.get("route") or None, status, limit, query.get("cursor") or None
        )
    except ValueError as exc:
        raise BadRequest(f"bad cursor: {exc}") from None
    items = []
    for summary in map(services.view.overlay, runs):
        items.append(
            {
                "run_id": summary.run_id,
                "route": summary.route,
                "status": summary.status,
                "attempt": summary.attempt,
                "created_at": summary.created_at,
                "updated_at": summary.updated_at,
                "finished_at": summary.finished_at,
                "wake_at": summary.wake_at,
                "method": summary.method,
                "path": summary.path_qs,
                "response_status": summary.response_status,
            }
        )
    return web.json_response({"runs": items, "next_cursor": cursor})


async def get_run(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    run_id = _run_id(request)
    state = await services.view.get(run_id, stored=True)
    if state is None:
        raise NotFound("no such run", run_id=run_id)
    attempts = await services.store.list_attempts(run_id)
    steps = await services.store.list_steps(run_id)
    step_errors, step_errors_dropped = await services.store.list_step_errors(run_id)
    pending = await services.store.list_pending(run_id)
    suspension = None
    if pending:
        first = min(pending, key=lambda p: (p.wake_at is None, p.wake_at or 0.0))
        suspension = {
            "kind": first.kind,
            "step_id": first.step_id,
            "wake_at": first.wake_at,
            "event": first.event,
            "match": orjson.loads(first.match) if first.match else None,
        }
    # From the stored headers as they are, before redaction: traceparent is never sealed.
    trace_id = trace_of(run_id, state.request.headers).trace_id
    ui_url = services.config.tracing.ui_url
    body: dict[str, Any] = {
        "run_id": run_id,
        "trace_id": trace_id,
        "trace_url": None if ui_url is None else ui_url.replace("{trace_id}", trace_id),
        "route": state.route,
        "status": state.status,
        "attempt": state.attempt,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "finished_at": state.finished_at,
        "wake_at": state.wake_at,
        "waiting": _waiting(state.waiting, state.wake_at),
        "owner": state.owner,
        "request": {
            "method": state.request.method,
            "path": state.request.path_qs,
            "body_bytes": len(state.request.body),
            # Credentials never leave: sensitive values (sealed or not) are redacted.
            "headers": services.driver.credentials.redact(state.request.headers),
        },
        "attempts": [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "ended_at": a.ended_at,
                "outcome": a.outcome,
                "status": a.status,
                "detail": a.detail,
            }
            for a in attempts
        ],
        "steps": steps_view(attempts, steps, step_errors),
        "step_errors_dropped": step_errors_dropped,
        "suspension": suspension,
        "response": _summary(state.response),
        "stream": _stream(state.live.stream if state.live is not None else None),
    }
    return web.json_response(body)


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not RUN_ID.fullmatch(run_id):
        raise NotFound("no such run: a run id is 1 to 64 of A-Z a-z 0-9 _ -")
    return run_id


def _waiting(reason: str | None, until: float | None) -> dict[str, Any] | None:
    """Why the run waits for its next attempt, and until when (a guess while a circuit
    breaker holds it: it goes as soon as the breaker closes)."""
    return None if reason is None else {"reason": reason, "until": until}


def _stream(stream: Stream | None) -> dict[str, Any] | None:
    """A response streaming now (live here): how far it got and who follows it."""
    if stream is None or stream.ended is not None:
        return None
    return {
        "attempt": stream.attempt,
        "bytes": stream.size,
        "resets": stream.epoch,
        "streaming": stream.live,
        "clients": len(stream.readers),
        "kept": not stream.over_cap,
    }


def _summary(response: StoredResponse | None) -> dict[str, Any] | None:
    if response is None:
        return None
    content_type = next((v for k, v in response.headers if k.lower() == "content-type"), None)
    kept = response.kept
    return {
        "status": response.status,
        "body_bytes": len(response.body) if kept is None else max(kept, 0),
        "body_kept": kept != BODY_TOO_LARGE,
        "content_type": content_type,
    }


async def cancel(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    run_id = _run_id(request)
    await services.driver.cancel(run_id)
    metrics.child(metrics.ADMIN_ACTIONS, "cancel").inc()
    return web.json_response({"run_id": run_id, "status": RunStatus.CANCELLED.value})


async def retry(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    run_id = _run_id(request)
    await services.driver.retry(run_id)
    metrics.child(metrics.ADMIN_ACTIONS, "retry").inc()
    return web.json_response({"run_id": run_id, "status": RunStatus.RUNNING.value})


async def list_routes(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config
    return web.json_response(
        {
            "routes": [
                {"name": r.name, "path": r.match.path, "durable": r.durable} for r in config.routes
            ]
        }
    )
