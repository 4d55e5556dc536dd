"""Example: durable steps and an event wait in Starlette (async) handlers; FastAPI is alike.

Shows the client only; it never talks to anything but the sidecar URL it is given.

    uvicorn examples.starlette_app:app --port 3000   # then route /api/* to it in the gateway
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

try:
    import step_protocol  # noqa: F401  (installed with `pip install -e .`)
except ModuleNotFoundError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_protocol import RunContext, StepClient, Suspend, starlette_exception_handler


async def quote(sku: str) -> dict[str, int]:
    """Stands in for a slow third-party call."""
    await asyncio.sleep(0)
    return {"total": 42, "items": len(sku)}


async def charge(total: int, idempotency_key: str) -> str:
    """Stands in for a payment: pass the provider a key so a re-run charges once."""
    await asyncio.sleep(0)
    return f"ch_{idempotency_key[-8:]}"


def create_app() -> Starlette:
    # One per process; its aiohttp session is opened on first use, inside the event loop.
    steps = StepClient()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with steps:  # closes the session at shutdown
            yield

    async def order(request: Request) -> JSONResponse:
        ctx: RunContext = steps.context(request.headers)
        sku = (await request.json()).get("sku", "A1")
        priced = await ctx.step("quote", lambda: quote(sku))
        # Steps are keyed by id; a retry after a crash here gets "quote" back and charges once.
        key = f"{ctx.run_id}:charge"
        charge_id = await ctx.step("charge", lambda: charge(priced["total"], key), sync=True)
        return JSONResponse({"run_id": ctx.run_id, "order": "ok", "charge": charge_id})

    async def ship(request: Request) -> JSONResponse:
        ctx = steps.context(request.headers)
        order_id = request.path_params["order_id"]
        slot = await ctx.step("reserve", lambda: {"slot": len(order_id)})
        # Behind the gateway this raises Suspend until the payment event for this order is
        # posted (POST /v1/events on the admin listener) or an hour passes: the exception
        # handler answers 202 and the gateway calls `ship` again then. None: timed out.
        paid = await ctx.wait_for_event(
            "paid", "order.paid", match={"data.order_id": order_id}, timeout="1h"
        )
        return JSONResponse({"run_id": ctx.run_id, "shipped": paid is not None, **slot})

    app = Starlette(
        routes=[
            Route("/api/order", order, methods=["POST"]),
            Route("/api/ship/{order_id}", ship, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    # Answers a `Suspend` (a sleep or wait not over yet) with 202 JSON; FastAPI: the same.
    app.add_exception_handler(Suspend, starlette_exception_handler)
    return app


app = create_app()
