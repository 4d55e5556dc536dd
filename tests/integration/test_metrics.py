"""/metrics is Prometheus text that prometheus-client's own parser reads; health checks."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Backend, GatewayFactory, durable_route

pytestmark = pytest.mark.both_stores

EXPECTED = {
    "durable_requests",
    "durable_runs",
    "durable_attempts",
    "durable_retries",
    "durable_steps_recorded",
    "durable_deliveries",
    "durable_upstream_latency_seconds",
    "durable_gateway_overhead_seconds",
    "durable_store_write_seconds",
    "durable_store_queue_depth",
    "durable_runs_in_flight",
    "durable_suspensions",
}


async def test_metrics_parse_and_count(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url, retry="{initial_backoff: 10ms}"))
    async with http.post(gw.url("/demo/steps?n=2&fail_at=2&mode=500")) as resp:
        assert resp.status == 200
    async with http.get(gw.admin + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert EXPECTED <= families.keys(), EXPECTED - families.keys()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("durable_retries_total", (("route", "demo"),))] == 1
    assert samples[("durable_steps_recorded_total", (("result", "created"),))] == 2
    assert samples[("durable_runs_total", (("outcome", "succeeded"), ("route", "demo")))] == 1


async def test_health_endpoints(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    for path in ("/healthz", "/readyz"):
        async with http.get(gw.admin + path) as resp:
            assert resp.status == 200


async def test_the_admin_token_is_a_bearer_credential(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`Bearer` in any case (RFC 9110: schemes are case-insensitive); a bare token, another
    scheme or another token is refused; health checks stay open."""
    gw = gateway_factory(durable_route(backend.url), extra_yaml="security:\n  admin_token: s3\n")
    cases = {
        "Bearer s3": 200,
        "bearer s3": 200,
        "BEARER  s3 ": 200,
        "s3": 401,
        "Basic s3": 401,
        "Bearer s4": 401,
        "Bearer": 401,
        "": 401,
    }
    for header, status in cases.items():
        async with http.get(gw.admin + "/v1/runs", headers={"Authorization": header}) as resp:
            assert resp.status == status, header
    async with http.get(gw.admin + "/healthz") as resp:
        assert resp.status == 200
