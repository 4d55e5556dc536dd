"""The OpenAPI 3.1 documents of the sidecar and admin APIs, served at `GET /openapi.json`.

The JSON files beside this module are the source: checked in, shipped as package data,
served as stored bytes. Never generated from the handlers, so a test can hold one
against the other (`tests/unit/test_openapi.py`).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final, Literal

from aiohttp import web

PATH: Final = "/openapi.json"
"""Where each listener serves its document."""

Api = Literal["sidecar", "admin"]


@cache
def document(api: Api) -> bytes:
    """The document's bytes; read once, they do not change while the process runs."""
    return resources.files(__name__).joinpath(f"{api}.json").read_bytes()


def response(api: Api) -> web.Response:
    return web.Response(body=document(api), content_type="application/json")


async def admin_document(request: web.Request) -> web.Response:
    return response("admin")
