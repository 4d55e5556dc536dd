"""Client test fixtures: the sidecar stub on a real socket, and a run context of each flavour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from step_protocol import RunContext, StepClient, SyncRunContext, SyncStepClient
from tests.unit.sidecar_stub import FLAVOURS, RUN, STUB, Ctx, MakeCtx, Sidecar, handle


@pytest.fixture
async def sidecar(aiohttp_server: AiohttpServer) -> Sidecar:
    stub = Sidecar()
    app = web.Application()
    app[STUB] = stub
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    stub.base = str(server.make_url(f"/v1/runs/{RUN}"))
    return stub


@pytest.fixture(params=FLAVOURS)
async def make_ctx(request: pytest.FixtureRequest) -> AsyncIterator[MakeCtx]:
    """Each test runs four times: StepClient, bare RunContext, SyncStepClient, bare
    SyncRunContext (the sync ones driven from a worker thread)."""
    flavour: str = request.param
    if flavour == "StepClient":
        async with StepClient() as client:
            yield lambda headers: Ctx(client.context(headers))
    elif flavour == "RunContext":
        yield lambda headers: Ctx(RunContext.from_headers(headers))
    elif flavour == "SyncStepClient":
        with SyncStepClient() as sync_client:
            yield lambda headers: Ctx(sync_client.context(headers))
    else:
        yield lambda headers: Ctx(SyncRunContext.from_headers(headers))
