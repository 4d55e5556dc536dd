"""The admin runs API: list and inspect runs, cancel and retry them.

Reads the store (and the live run, when this process drives it); changes runs only
through the driver. Mounted on the admin listener behind its bearer token.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import metrics
from gateway.engine import operations
from gateway.engine.runs import Run
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.http.run_steps import steps_view
from gateway.http.services import SERVICES, Services
from gateway.store import RunRow, StoredResponse
from gateway.store.records import RunStatus

MAX_LIMIT = 500


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
    if status is not None and status not in set(RunStatus):
        raise BadRequest(f"status must be one of {', '.join(RunStatus)}")
    try:
        runs, cursor = await services.store.list_runs(
            query.get("route") or None, status, limit, query.get("cursor") or None
        )
    except ValueError as exc:
        raise BadRequest(f"bad cursor: {exc}") from None
    items = []
    for summary in runs:
        live = services.driver.get(summary.run_id)
        items.append(
            {
                "run_id": summary.run_id,
                "route": summary.route,
                "status": live.run.status.value if live else summary.status,
                "attempt": live.run.attempt if live else summary.attempt,
                "created_at": summary.created_at,
                "updated_at": summary.updated_at,
                "finished_at": summary.finished_at,
                "wake_at": live.run.wake_at if live else summary.wake_at,
                "method": summary.method,
                "path": summary.path_qs,
                "response_status": summary.response_status,
            }
        )
    return web.json_response({"runs": items, "next_cursor": cursor})


async def get_run(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    run_id = request.match_info["run_id"]
    row = await _row(services, run_id)
    live = services.driver.get(run_id)
    attempts = await services.store.list_attempts(run_id)
    steps = await services.store.list_steps(run_id)
    step_errors, step_errors_dropped = await services.store.list_step_errors(run_id)
    pending = await services.store.list_pending(run_id)
    response = live.run.response if live and live.run.response else row.response
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
    body: dict[str, Any] = {
        "run_id": run_id,
        "route": row.route,
        "status": live.run.status.value if live else row.status,
        "attempt": live.run.attempt if live else row.attempt,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
        "wake_at": live.run.wake_at if live else row.wake_at,
        "request": {
            "method": row.request.method,
            "path": row.request.path_qs,
            "body_bytes": len(row.request.body),
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
        "response": _summary(response),
    }
    return web.json_response(body)


def _summary(response: StoredResponse | None) -> dict[str, Any] | None:
    if response is None:
        return None
    content_type = next((v for k, v in response.headers if k.lower() == "content-type"), None)
    return {
        "status": response.status,
        "body_bytes": len(response.body),
        "content_type": content_type,
    }


async def _row(services: Services, run_id: str) -> RunRow:
    row = await services.store.get_run(run_id)
    if row is None:
        raise NotFound("no such run", run_id=run_id)
    return row


async def cancel(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    run_id = request.match_info["run_id"]
    live = services.driver.get(run_id)
    status = None
    if live is None:
        status = (await _row(services, run_id)).status
    await operations.cancel(services.driver, run_id, status)
    metrics.child(metrics.ADMIN_ACTIONS, "cancel").inc()
    return web.json_response({"run_id": run_id, "status": RunStatus.CANCELLED.value})


async def retry(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    run_id = request.match_info["run_id"]
    row = await _row(services, run_id)
    live = services.driver.get(run_id)
    status = live.run.status.value if live else row.status
    if status not in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED):
        raise Conflict(
            f"only a failed, cancelled or paused run can be retried; this one is {status}",
            run_id=run_id,
        )
    route = services.scheduler.routes.get(row.route)
    if route is None or not route.durable:
        raise Conflict(f"route {row.route!r} is no longer configured", run_id=run_id)
    steps = await services.store.load_steps(run_id)
    run = Run(
        run_id,
        route,
        row.request,
        row.created_at,
        attempt=row.attempt,
        steps=steps,
    )
    await operations.retry(services.driver, run)
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
