"""Tracing's cost: durable 0-step and 3-step throughput through a gateway exporting every
run's spans (`sample_ratio: 1.0`) against one with tracing off, in the same run.

The spans go to `bench/otlp_sink.py`, which answers without decoding at the lowest CPU
priority, as a collector on another host would cost the gateway nothing here. The
gateway's figures include its span exporter's process (its child) CPU and memory. Both
gateways run side by side; rounds interleave them, so a drift of the machine hits both.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import aiohttp

from bench import hops
from bench.hops import Hop
from bench.loadgen import Loadgen
from bench.processes import HOP_ROUTES, Lab, Service
from bench.sizes import Sizes

log = logging.getLogger("bench")

OFF: Final = "off"
ON: Final = "on"


def tracing_yaml(endpoint: str) -> str:
    return f"""\
        tracing:
          otlp_endpoint: {endpoint}
          service_name: durable-gateway-bench
          sample_ratio: 1.0
        """


async def sink_stats(sink: Service) -> dict[str, int]:
    """Exports the sink has answered and their bytes, as sent."""
    async with aiohttp.ClientSession() as session:
        async with session.get(sink.url + "/_stats") as resp:
            stats: dict[str, int] = await resp.json()
            return stats


async def measure(lab: Lab, backend: Service, loadgen: Loadgen, sizes: Sizes) -> dict[str, Any]:
    """`{"/0": {"off": figures, "on": figures, "rps_ratio", "cpu_ratio"}, "/3": …, "sink": …}`:
    the c=32 throughput and gateway CPU of each, on over off."""
    sink = await lab.otlp_sink()
    routes = HOP_ROUTES.format(upstream=backend.url)
    off = await lab.gateway("tracing-off", routes)
    on = await lab.gateway("tracing-on", routes, extra_yaml=tracing_yaml(sink.url))
    for gateway in (off, on):  # the on-gateway's CPU and memory include its span exporter's
        gateway.whole_tree = True
    sink_before = sink.usage()
    try:
        targets = [Hop(OFF, off.url, service=off), Hop(ON, on.url, service=on)]
        figures = await hops.measure(loadgen, targets, backend, sizes, latency=False)
        received = await sink_stats(sink)
        sink_cpu = sink.usage().cpu_seconds - sink_before.cpu_seconds
    finally:
        for service in (on, off, sink):
            lab.stop(service)
    out: dict[str, Any] = {}
    for endpoint, by_target in figures.items():
        f_off, f_on = by_target[OFF], by_target[ON]
        out[endpoint] = {
            OFF: f_off,
            ON: f_on,
            "rps_ratio": _ratio(f_on["rps"], f_off["rps"]),
            "cpu_ratio": _ratio(f_on["hop_cpu_ms"], f_off["hop_cpu_ms"]),
        }
    if not received["requests"]:
        log.warning("tracing: the sink received no export: tracing 'on' exported nothing")
    out["sink"] = {**received, "cpu_seconds": sink_cpu}
    return out


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None
