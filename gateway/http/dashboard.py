"""Admin listener: the dashboard page (`GET /`) and its script and stylesheet.

Serves only the fixed files in `gateway/http/static/`; never holds run data (the page reads
the runs API with the operator's token) and never opens a path built from the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from aiohttp import web

from gateway.errors import NotFound

PAGE = "dashboard.html"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file the dashboard serves."""

    name: str
    content_type: str


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(PAGE, "text/html"),
        Asset("dashboard.js", "text/javascript"),
        Asset("dashboard.css", "text/css"),
    )
}
"""The only names `/static/{name}` answers; anything else is a 404, so no traversal."""

# The page loads nothing but its own script and stylesheet and talks only to this origin.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    """The packaged file's bytes; read once, they do not change while the process runs."""
    return resources.files("gateway.http").joinpath("static", name).read_bytes()


def _respond(asset: Asset) -> web.Response:
    return web.Response(
        body=_read(asset.name),
        content_type=asset.content_type,
        charset="utf-8",
        headers=_HEADERS,
    )


async def page(request: web.Request) -> web.Response:
    return _respond(ASSETS[PAGE])


async def static(request: web.Request) -> web.Response:
    asset = ASSETS.get(request.match_info["name"])
    if asset is None or asset.name == PAGE:
        raise NotFound("no such dashboard file")
    return _respond(asset)


def routes() -> web.RouteTableDef:
    """`GET /` and `GET /static/{name}`; the admin app's auth lets both through tokenless."""
    table = web.RouteTableDef()
    table.get("/")(page)
    table.get("/static/{name}")(static)
    return table
