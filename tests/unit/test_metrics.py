"""The loop-only metric types: what they count, and the text a scrape makes of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway import metrics


class _Only(Collector):
    def __init__(self, *families: metrics.Counter | metrics.Gauge | metrics.Histogram) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric()


def _scrape(
    *families: metrics.Counter | metrics.Gauge | metrics.Histogram,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(_Only(*families))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_gauges_by_labels() -> None:
    hits = metrics.Counter("t_hits_total", "Hits.", ("route", "kind"), exported=False)
    depth = metrics.Gauge("t_depth", "Depth.", exported=False)
    hits.labels("a", "x").inc()
    hits.labels("a", "x").inc(2)
    hits.labels("b", "x").inc()
    depth.inc(5)
    depth.dec(2)
    samples = _scrape(hits, depth)
    assert samples[("t_hits_total", (("kind", "x"), ("route", "a")))] == 3
    assert samples[("t_hits_total", (("kind", "x"), ("route", "b")))] == 1
    assert samples[("t_depth", ())] == 3
    depth.set(7)
    assert _scrape(depth)[("t_depth", ())] == 7


def test_histogram_buckets_are_cumulative_and_a_bound_is_inclusive() -> None:
    took = metrics.Histogram(
        "t_took_seconds", "Took.", ("route",), buckets=(0.1, 1.0), exported=False
    )
    series = took.labels("a")
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        series.observe(value)
    samples = _scrape(took)
    label = ("route", "a")
    assert samples[("t_took_seconds_bucket", (("le", "0.1"), label))] == 2
    assert samples[("t_took_seconds_bucket", (("le", "1.0"), label))] == 4
    assert samples[("t_took_seconds_bucket", (("le", "+Inf"), label))] == 5
    assert samples[("t_took_seconds_count", (label,))] == 5
    assert samples[("t_took_seconds_sum", (label,))] == pytest.approx(4.65)


def test_an_unlabelled_family_shows_zero_before_any_update() -> None:
    errors = metrics.Counter("t_errors_total", "Errors.", exported=False)
    took = metrics.Histogram("t_wait_seconds", "Wait.", buckets=(1.0,), exported=False)
    samples = _scrape(errors, took)
    assert samples[("t_errors_total", ())] == 0
    assert samples[("t_wait_seconds_count", ())] == 0


def test_wrong_label_count_is_refused() -> None:
    hits = metrics.Counter("t_refused_total", "Hits.", ("route",), exported=False)
    with pytest.raises(ValueError, match="takes labels"):
        hits.labels("a", "b")


def test_the_gateway_families_are_exported_once() -> None:
    names = [family.name for family in metrics._FAMILIES]
    assert len(names) == len(set(names))
    assert "durable_requests_total" in names and "durable_gateway_overhead_seconds" in names
