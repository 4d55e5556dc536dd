"""Every Prometheus metric the gateway exports, defined once; handlers import them.

Names and labels are part of the operations contract: change them only with a note.
The values are plain numbers that only the event loop's thread touches, read by one
collector when `/metrics` is scraped: prometheus-client's own metric types take a lock
on every update, and the hot path makes eight updates per durable request.
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Iterator
from typing import ClassVar, Generic, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString


class Value:
    """One counter or gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Buckets:
    """One histogram series: a count per bucket (not cumulative until scraped), and the sum;
    with the last exemplar (a trace's ids) seen in each bucket, once one was given."""

    __slots__ = ("bounds", "counts", "sum", "exemplars")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] | None = None

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        bucket = bisect.bisect_left(self.bounds, amount)
        self.counts[bucket] += 1
        self.sum += amount
        if exemplar is not None:
            if self.exemplars is None:
                self.exemplars = [None] * len(self.counts)
            self.exemplars[bucket] = Exemplar(exemplar, amount, time.time())


_S = TypeVar("_S", Value, Buckets)


class _Family(Generic[_S]):
    """A metric and its series by label values; the unlabelled one has the series ()."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] = (),
        *,
        exported: bool = True,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.series: dict[tuple[str, ...], _S] = {}
        if not labelnames:
            self._plain: _S = self.labels()
        if exported:
            _FAMILIES.append(self)

    def _new(self) -> _S:
        raise NotImplementedError

    def labels(self, *values: str) -> _S:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = self._new()
        return series

    def metric(self) -> Metric:
        raise NotImplementedError


class _Values(_Family[Value]):
    """Counters and gauges: one number per series."""

    family_type: ClassVar[type[CounterMetricFamily] | type[GaugeMetricFamily]]

    def _new(self) -> Value:
        return Value()

    def inc(self, amount: float = 1.0) -> None:
        self._plain.value += amount

    def metric(self) -> Metric:
        family = self.family_type(self.name, self.documentation, labels=self.labelnames)
        for values, series in self.series.items():
            family.add_metric(values, series.value)
        return family


class Counter(_Values):
    family_type = CounterMetricFamily  # it names the family without `_total`


class Gauge(_Values):
    family_type = GaugeMetricFamily

    def dec(self, amount: float = 1.0) -> None:
        self._plain.value -= amount

    def set(self, value: float) -> None:
        self._plain.value = float(value)


class Histogram(_Family[Buckets]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] = (),
        *,
        buckets: tuple[float, ...],
        exported: bool = True,
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        super().__init__(name, documentation, labelnames, exported=exported)

    def _new(self) -> Buckets:
        return Buckets(self.bounds)

    def observe(self, amount: float) -> None:
        self._plain.observe(amount)

    def metric(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, series in self.series.items():
            cumulative: list[tuple[str, float] | tuple[str, float, Exemplar | None]] = []
            total = 0
            exemplars = series.exemplars or [None] * len(edges)
            for edge, count, exemplar in zip(edges, series.counts, exemplars, strict=True):
                total += count
                cumulative.append((edge, float(total), exemplar))
            family.add_metric(values, cumulative, series.sum)  # type: ignore[arg-type]
        return family


_FAMILIES: list[_Family[Value] | _Family[Buckets]] = []


class _Collector(Collector):
    def collect(self) -> Iterator[Metric]:
        for family in _FAMILIES:
            yield family.metric()


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
    ("route", "kind"),
)
REJECTED = Counter(
    "durable_rejected_total",
    "Requests the ingress answered itself with an error, by HTTP status.",
    ("status",),
)
RUNS = Counter(
    "durable_runs_total",
    "Runs that reached a final state, by route and outcome.",
    ("route", "outcome"),
)
ATTEMPTS = Counter(
    "durable_attempts_total", "Upstream attempts, by route and outcome kind.", ("route", "outcome")
)
RETRIES = Counter("durable_retries_total", "Retries scheduled after a failed attempt.", ("route",))
BUDGET_DEFERRED = Counter(
    "durable_retry_budget_deferred_total",
    "Retries the route's retry budget held back (each counted once, however long it waits).",
    ("route",),
)
BUDGET_WAITING = Gauge(
    "durable_retry_budget_waiting",
    "Retries waiting now for room in the route's retry budget.",
    ("route",),
)
CIRCUIT_STATE = Gauge(
    "durable_circuit_state",
    "The upstream's circuit breaker: 0 closed, 1 open, 2 half-open (its probe in flight).",
    ("upstream",),
)
CIRCUIT_OPENED = Counter(
    "durable_circuit_open_total", "Times the upstream's circuit breaker opened.", ("upstream",)
)
CIRCUIT_HELD = Gauge(
    "durable_circuit_held",
    "Attempts held now by the upstream's open circuit breaker.",
    ("upstream",),
)
STEPS = Counter(
    "durable_steps_recorded_total",
    "Step results recorded through the sidecar, by result.",
    ("result",),
)
SUSPENSIONS = Counter(
    "durable_suspensions_total", "Runs suspended (durable sleep or event wait), by kind.", ("kind",)
)
DELIVERIES = Counter(
    "durable_deliveries_total",
    "How the original client got its answer: direct, held, redirect_303, accepted_202.",
    ("route", "mode"),
)
DETACHED = Counter(
    "durable_clients_detached_total",
    "Clients cut off while a response streamed to them, by reason: slow (fell too far "
    "behind the upstream past max_response, where nothing is stored for them to read "
    "later) or gone (disconnected). Their runs go on.",
    ("route", "reason"),
)
STREAM_RETRIES = Counter(
    "durable_stream_retries_total",
    "Attempts that streamed after an earlier one had begun the response, by outcome: "
    "resumed (the same bytes: clients saw no seam) or diverged (clients were reset).",
    ("route", "outcome"),
)
UPSTREAM_LATENCY = Histogram(
    "durable_upstream_latency_seconds",
    "Time from sending an attempt to the upstream's response headers.",
    ("route",),
    buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "durable_gateway_overhead_seconds",
    "Gateway time before the first attempt is sent (admission, headers, run set-up).",
    ("route",),
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
TAKEN_OVER = Counter(
    "durable_runs_taken_over",
    "Runs this node took from another: its process died, or its lease expired.",
    ("why",),
)
LOST_RUNS = Counter(
    "durable_runs_lost", "Runs another node took from this one while it was silent."
)
SUSPENDED = Gauge(
    "durable_runs_suspended", "Suspended runs in the store, by what they wait for.", ("kind",)
)
TIMERS = Gauge(
    "durable_timers_pending", "Durable timers in the store: sleeps and waits with a timeout."
)
EVENTS = Counter(
    "durable_events_total",
    "Events posted to /v1/events, by result (received, duplicate).",
    ("result",),
)
EVENTS_MATCHED = Counter("durable_events_matched_total", "Waits completed by a posted event.")
SPANS_EXPORTED = Counter(
    "durable_trace_spans_exported_total", "Spans a collector accepted (`tracing.otlp_endpoint`)."
)
SPANS_DROPPED = Counter(
    "durable_trace_spans_dropped_total",
    "Spans not exported: queue_full (the collector is down or slow), refused (it said"
    " no), exporter_down (the exporter's process was starting again).",
    ("reason",),
)
ADMIN_ACTIONS = Counter(
    "durable_admin_actions_total", "Operator actions on runs (cancel, retry).", ("action",)
)


@functools.cache
def child(metric: _Family[_S], *values: str) -> _S:
    """`metric.labels(*values)`, looked up once: the hot path asks several times per
    request. Label values are a small fixed set (routes, outcomes, kinds), so the cache
    stays as small as the metric."""
    return metric.labels(*values)


def observe_commit(writes: int, seconds: float) -> None:
    """The writer's commit hook: one group-commit transaction finished."""
    STORE_BATCH.observe(writes)
    STORE_WRITE.observe(seconds)


# Registered once every family exists: the registry reads their names now, to refuse
# a second metric of the same name later.
REGISTRY.register(_Collector())
