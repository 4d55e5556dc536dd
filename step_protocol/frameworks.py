"""Framework glue: turns `Suspend` into the suspend response at the edge of a backend.

Imports aiohttp, Starlette and Flask only inside the helpers, so none of them is required
to import this module; it never catches anything but `Suspend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from step_protocol import wire
from step_protocol._context import Suspend

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler
    from flask import Flask
    from flask.typing import ResponseReturnValue
    from starlette.requests import Request
    from starlette.responses import Response

SUSPEND_STATUS: Final = 202
"""Status of the suspend response. The gateway ignores it (the run is suspended); 202
says "accepted, not done" to anyone calling the backend directly."""


def suspend_body(exc: Suspend) -> dict[str, Any]:
    """The JSON of the suspend response: `{"suspended": true, "kind", "wake_at", "step_id"}`."""
    return {
        "suspended": True,
        "kind": str(exc.kind),
        "wake_at": wire.format_timestamp(exc.wake_at) if exc.wake_at else None,
        "step_id": exc.step_id,
    }


async def aiohttp_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp middleware: `web.Application(middlewares=[aiohttp_middleware])`."""
    from aiohttp import web

    try:
        return await handler(request)
    except Suspend as exc:
        return web.json_response(suspend_body(exc), status=SUSPEND_STATUS)


# What `@web.middleware` sets; done by hand so that importing this module needs no aiohttp.
aiohttp_middleware.__middleware_version__ = 1  # type: ignore[attr-defined]


async def starlette_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette or FastAPI: `app.add_exception_handler(Suspend, starlette_exception_handler)`."""
    from starlette.responses import JSONResponse

    if not isinstance(exc, Suspend):
        raise exc  # registered for another exception class by mistake: not ours to answer
    return JSONResponse(suspend_body(exc), status_code=SUSPEND_STATUS)


def flask_register(app: Flask) -> None:
    """Flask: answer `Suspend` from any view of `app` with the suspend response."""
    from flask import jsonify

    def on_suspend(exc: Suspend) -> ResponseReturnValue:
        return jsonify(suspend_body(exc)), SUSPEND_STATUS

    app.register_error_handler(Suspend, on_suspend)
