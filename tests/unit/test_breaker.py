"""Circuit breakers as traces: opening, probing, closing; kept across a reload."""

from __future__ import annotations

import pytest

from gateway import metrics
from gateway.config import CircuitBreakerConfig, RetryPolicy, RouteConfig, RouteMatch, RouteSettings
from gateway.engine.breaker import Admission, Breaker, Breakers, State
from gateway.engine.gate import failed
from gateway.engine.retries import AttemptOutcome, OutcomeKind

PASS, PROBE, HOLD = Admission.PASS, Admission.PROBE, Admission.HOLD
CLOSED, OPEN, HALF = State.CLOSED, State.OPEN, State.HALF_OPEN

# (now, event, expected state after): "admit" events expect an admission too;
# "fail"/"ok" report an attempt admitted as PASS, "probe-fail"/"probe-ok" the probe.
TRACE: list[tuple[float, str, Admission | None, State]] = [
    (0.0, "admit", PASS, CLOSED),
    (0.1, "fail", None, CLOSED),
    (0.2, "fail", None, CLOSED),
    (0.3, "ok", None, CLOSED),  # a success resets the count: failures in a row
    (0.4, "fail", None, CLOSED),
    (0.5, "fail", None, CLOSED),
    (1.0, "fail", None, OPEN),  # the third in a row: open until 6.0
    (1.1, "ok", None, OPEN),  # an attempt sent before it opened: tells nothing now
    (2.0, "admit", HOLD, OPEN),
    (5.9, "admit", HOLD, OPEN),
    (6.0, "admit", PROBE, HALF),  # one probe per interval
    (6.1, "admit", HOLD, HALF),  # the others wait for its outcome
    (7.0, "probe-fail", None, OPEN),  # open for another interval: until 12.0
    (11.0, "admit", HOLD, OPEN),
    (12.0, "admit", PROBE, HALF),
    (12.5, "abandon", None, OPEN),  # that probe was not sent: the next may go at once
    (12.5, "admit", PROBE, HALF),
    (13.0, "probe-ok", None, CLOSED),
    (13.1, "admit", PASS, CLOSED),
    (13.2, "fail", None, CLOSED),  # counting starts again from zero
]


def test_breaker_opens_probes_and_closes() -> None:
    breaker = Breaker("http://trace:1", CircuitBreakerConfig(failures=3, interval=5.0))
    opened = metrics.child(metrics.CIRCUIT_OPENED, "http://trace:1")
    state = metrics.CIRCUIT_STATE.labels("http://trace:1")
    before = opened.value
    for now, event, admission, expected in TRACE:
        if event == "admit":
            assert breaker.admit(now) is admission, now
        elif event == "abandon":
            breaker.abandon(now)
        else:
            breaker.record(event.endswith("fail"), probe=event.startswith("probe"), now=now)
        assert breaker.state is expected, now
        assert state.value == expected.value
    assert opened.value == before + 1  # a failed probe keeps it open: no second opening


def test_held_attempts_are_told_of_each_change() -> None:
    breaker = Breaker("http://wake:1", CircuitBreakerConfig(failures=1, interval=5.0))
    changed = breaker.changed
    breaker.record(True, probe=False, now=0.0)
    assert changed.is_set() and not breaker.changed.is_set()
    assert breaker.look_again_at(1.0) == 5.0  # the next probe
    assert breaker.admit(5.0) is PROBE
    assert breaker.look_again_at(5.5) == 10.5  # the probe's outcome, at the latest
    changed = breaker.changed
    breaker.record(False, probe=True, now=6.0)
    assert changed.is_set() and breaker.state is CLOSED


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (AttemptOutcome(OutcomeKind.RESPONSE, status=200), False),
        (AttemptOutcome(OutcomeKind.RESPONSE, status=404), False),
        (AttemptOutcome(OutcomeKind.RESPONSE, status=501), False),  # not in retry.on
        (AttemptOutcome(OutcomeKind.RESPONSE, status=503), True),
        (AttemptOutcome(OutcomeKind.RESPONSE, status=503, no_retry=True), True),
        (AttemptOutcome(OutcomeKind.CONNECT_ERROR), True),
        (AttemptOutcome(OutcomeKind.TIMEOUT), True),
    ],
)
def test_what_counts_as_a_failure(outcome: AttemptOutcome, expected: bool) -> None:
    assert failed(outcome, RetryPolicy(on_errors=frozenset())) is expected


def route(name: str, upstream: str, breaker: CircuitBreakerConfig | None) -> RouteConfig:
    settings = RouteSettings(circuit_breaker=breaker)
    return RouteConfig(name, RouteMatch("/" + name), upstream, settings=settings)


def test_one_breaker_per_origin_kept_with_its_state_across_a_reload() -> None:
    config = CircuitBreakerConfig(failures=1)
    breakers = Breakers(
        [
            route("a", "http://one:8000/a", config),
            route("b", "http://ONE:8000/b", config),
            route("c", "http://two:80", config),
            route("d", "http://two", None),
        ]
    )
    a, c = breakers.get("a"), breakers.get("c")
    assert a is not None and c is not None
    assert breakers.get("b") is a and a.origin == "http://one:8000"
    assert c.origin == "http://two:80" and breakers.get("d") is None
    a.record(True, probe=False, now=0.0)
    assert a.state is OPEN
    held = c.changed
    slower = CircuitBreakerConfig(failures=1, interval=60.0)
    breakers.apply([route("b", "http://one:8000/b", slower)])
    assert breakers.get("b") is a and a.state is OPEN and a.config == slower
    assert breakers.get("a") is None and breakers.get("c") is None
    assert held.is_set() and c.state is CLOSED  # retired: what it held looks again
    assert ("http://two:80",) not in metrics.CIRCUIT_STATE.series
