"""The OpenAPI documents on a running gateway: each listener serves its own, and the
gateway answers as they say when fuzzed from them (schemathesis, `bench/fuzz.py`).
"""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
import orjson
import pytest

from bench import fuzz
from gateway.http import openapi
from tests import postgres
from tests.conftest import Backend, GatewayFactory, durable_route

EXAMPLES = 15
"""Random examples per operation in CI, beside each operation's boundary cases: the
whole run takes some 15 s on two slow cores. `python -m bench.fuzz` runs more."""


async def test_each_listener_serves_its_own_document_and_the_ingress_none(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url), extra_yaml="security:\n  admin_token: s3\n")
    for base, api in ((gw.sidecar, "sidecar"), (gw.admin, "admin")):
        async with http.get(base + openapi.PATH) as resp:  # no token, on either
            assert resp.status == 200 and resp.content_type == "application/json"
            assert await resp.read() == openapi.document(api)
        async with http.post(base + openapi.PATH) as resp:
            assert resp.status == 405 and resp.content_type == "application/problem+json"
            assert set(resp.headers["Allow"].split(",")) >= {"GET"}
    async with http.get(gw.admin + "/v1/runs") as resp:
        assert resp.status == 401  # the document is open, the API it describes is not
    async with http.get(gw.url(openapi.PATH)) as resp:  # the ingress is the users' routes
        assert resp.status == 404 and resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("/route-not-found")


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (the gateway's own file); a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server: postgres.PgServer = request.getfixturevalue("pg_server")
    return await server.create_database()


@pytest.mark.timeout(150)
async def test_fuzzing_both_documents_finds_nothing(store_url: str | None, tmp_path: Path) -> None:
    """Zero 5xx, every answer as documented, every error problem+json, and the gateway
    healthy afterwards with no traceback in its log; a failure names its seed. On both
    stores: PostgreSQL refuses what SQLite takes (U+0000 in text)."""
    seed = random.SystemRandom().getrandbits(32)
    store = "postgres" if store_url else "sqlite"
    report = await fuzz.measure(EXAMPLES, seed, tmp_path, store_url)
    documented = sum(
        method in item
        for api in ("sidecar", "admin")
        for item in orjson.loads(openapi.document(api))["paths"].values()
        for method in ("get", "put", "post", "delete", "patch")
    )
    assert report.operations == documented
    assert all(count >= 3 for count in report.per_operation.values()), report.text()
    assert report.ok, (
        f"python -m bench.fuzz --examples {EXAMPLES} --seed {seed} --store {store}\n{report.text()}"
    )
