"""Every Prometheus metric the gateway exports, defined once; handlers import them.

Names and labels are part of the operations contract: change them only with a note.
"""

from __future__ import annotations

import functools
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

_M = TypeVar("_M", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

REQUESTS = Counter(
    "durable_requests_total",
    "Requests the ingress admitted, by route and kind (durable or plain).",
    ["route", "kind"],
)
REJECTED = Counter(
    "durable_rejected_total",
    "Requests the ingress answered itself with an error, by HTTP status.",
    ["status"],
)
RUNS = Counter(
    "durable_runs_total",
    "Runs that reached a final state, by route and outcome.",
    ["route", "outcome"],
)
ATTEMPTS = Counter(
    "durable_attempts_total", "Upstream attempts, by route and outcome kind.", ["route", "outcome"]
)
RETRIES = Counter("durable_retries_total", "Retries scheduled after a failed attempt.", ["route"])
STEPS = Counter(
    "durable_steps_recorded_total",
    "Step results recorded through the sidecar, by result.",
    ["result"],
)
SUSPENSIONS = Counter(
    "durable_suspensions_total", "Runs suspended (durable sleep or event wait), by kind.", ["kind"]
)
DELIVERIES = Counter(
    "durable_deliveries_total",
    "How the original client got its answer: direct, held, redirect_303, accepted_202.",
    ["route", "mode"],
)
UPSTREAM_LATENCY = Histogram(
    "durable_upstream_latency_seconds",
    "Time from sending an attempt to the upstream's response headers.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "durable_gateway_overhead_seconds",
    "Gateway time before the first attempt is sent (admission, headers, run set-up).",
    ["route"],
    buckets=_OVERHEAD_BUCKETS,
)
STORE_WRITE = Histogram(
    "durable_store_write_seconds",
    "Duration of one group-commit transaction.",
    buckets=_LATENCY_BUCKETS,
)
STORE_BATCH = Histogram(
    "durable_store_batch_writes",
    "Writes committed per group-commit transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
STORE_QUEUE = Gauge("durable_store_queue_depth", "Writes queued and not yet committed.")
IN_FLIGHT = Gauge("durable_runs_in_flight", "Runs live in this process (running or waiting).")
SUSPENDED = Gauge(
    "durable_runs_suspended", "Suspended runs in the store, by what they wait for.", ["kind"]
)
TIMERS = Gauge(
    "durable_timers_pending", "Durable timers in the store: sleeps and waits with a timeout."
)
EVENTS = Counter(
    "durable_events_total",
    "Events posted to /v1/events, by result (received, duplicate).",
    ["result"],
)
EVENTS_MATCHED = Counter("durable_events_matched_total", "Waits completed by a posted event.")
ADMIN_ACTIONS = Counter(
    "durable_admin_actions_total", "Operator actions on runs (cancel, retry).", ["action"]
)


@functools.cache
def child(metric: _M, *values: str) -> _M:
    """`metric.labels(*values)`, looked up once: `labels()` validates and locks on every
    call, a cost the hot path pays several times per request. Label values are a small
    fixed set (routes, outcomes, kinds), so the cache stays as small as the metric."""
    return metric.labels(*values)


def observe_commit(writes: int, seconds: float) -> None:
    """The writer's commit hook: one group-commit transaction finished."""
    STORE_BATCH.observe(writes)
    STORE_WRITE.observe(seconds)
