"""Retry decisions and delays: status tables, exhaustion, jitter bounds, Retry-After."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from gateway.config import RetryPolicy
from gateway.engine.retries import (
    MAX_RETRY_AFTER,
    AttemptOutcome,
    Decision,
    OutcomeKind,
    Verdict,
    decide,
    next_delay,
    parse_retry_after,
)

POLICY = RetryPolicy()  # 5 attempts, 200ms doubling to 30s, ±20 %, 500/502/503/504 + errors
NO_JITTER = replace(POLICY, jitter=0.0)

RESPONSE = OutcomeKind.RESPONSE
CONNECT = OutcomeKind.CONNECT_ERROR
TIMEOUT = OutcomeKind.TIMEOUT


def status(
    code: int, *, retry_after: float | None = None, no_retry: bool = False
) -> AttemptOutcome:
    return AttemptOutcome(RESPONSE, status=code, retry_after=retry_after, no_retry=no_retry)


@pytest.mark.parametrize(
    ("outcome", "attempt", "verdict", "reason"),
    [
        # the default table: 5xx gateway-ish statuses and errors retry, the rest is final
        (status(500), 1, Verdict.RETRY, "status 500 is retriable"),
        (status(502), 1, Verdict.RETRY, "status 502 is retriable"),
        (status(503), 2, Verdict.RETRY, "status 503 is retriable"),
        (status(504), 4, Verdict.RETRY, "status 504 is retriable"),
        (status(501), 1, Verdict.FINAL, "status 501 is not retriable"),
        (status(200), 1, Verdict.FINAL, "status 200 is not retriable"),
        (status(201), 1, Verdict.FINAL, "status 201 is not retriable"),
        (status(304), 1, Verdict.FINAL, "status 304 is not retriable"),
        (status(400), 1, Verdict.FINAL, "status 400 is not retriable"),
        (status(404), 1, Verdict.FINAL, "status 404 is not retriable"),
        (status(429), 1, Verdict.FINAL, "status 429 is not retriable"),
        (AttemptOutcome(CONNECT), 1, Verdict.RETRY, "connect_error is retriable"),
        (AttemptOutcome(TIMEOUT), 3, Verdict.RETRY, "timeout is retriable"),
        # exhaustion: attempt N of max N is the last
        (status(503), 5, Verdict.FINAL, "attempts exhausted (5 of 5)"),
        (AttemptOutcome(TIMEOUT), 5, Verdict.FINAL, "attempts exhausted (5 of 5)"),
        (AttemptOutcome(CONNECT), 7, Verdict.FINAL, "attempts exhausted (7 of 5)"),
        # the cause is named before the count when both make it final
        (status(404), 5, Verdict.FINAL, "status 404 is not retriable"),
        # Durable-Retry: no wins over everything
        (status(503, no_retry=True), 1, Verdict.FINAL, "upstream said Durable-Retry: no"),
        (status(200, no_retry=True), 1, Verdict.FINAL, "upstream said Durable-Retry: no"),
        # a response without a status cannot be judged: final, not a crash
        (AttemptOutcome(RESPONSE), 1, Verdict.FINAL, "response without a status"),
    ],
)
def test_decide_default_policy(
    outcome: AttemptOutcome, attempt: int, verdict: Verdict, reason: str
) -> None:
    decision = decide(outcome, POLICY, attempt, random.Random(1))
    assert (decision.verdict, decision.reason) == (verdict, reason)
    if verdict is Verdict.FINAL:
        assert decision.delay == 0.0
    else:
        assert decision.delay > 0.0


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [
        (status(429), Verdict.RETRY),  # listed: retried
        (status(409), Verdict.RETRY),
        (status(500), Verdict.FINAL),  # not listed any more
        (AttemptOutcome(TIMEOUT), Verdict.RETRY),
        (AttemptOutcome(CONNECT), Verdict.FINAL),  # not in on_errors
    ],
)
def test_decide_custom_policy(outcome: AttemptOutcome, verdict: Verdict) -> None:
    policy = replace(POLICY, on_status=frozenset({409, 429}), on_errors=frozenset({"timeout"}))
    assert decide(outcome, policy, 1, random.Random(1)).verdict is verdict


def test_decide_single_attempt_policy_never_retries() -> None:
    policy = replace(POLICY, max_attempts=1)
    decision = decide(status(503), policy, 1, random.Random(1))
    assert decision == Decision(Verdict.FINAL, reason="attempts exhausted (1 of 1)", exhausted=True)


def test_decide_delay_is_next_delay_with_same_draw() -> None:
    outcome = status(503, retry_after=None)
    decision = decide(outcome, POLICY, 3, random.Random(42))
    assert decision.delay == next_delay(POLICY, 3, None, random.Random(42))


def test_decide_honours_retry_after() -> None:
    decision = decide(status(503, retry_after=120.0), POLICY, 1, random.Random(1))
    assert decision.verdict is Verdict.RETRY
    assert decision.delay == 120.0


def test_a_run_of_retriable_failures_ends_after_max_attempts() -> None:
    rng = random.Random(7)
    verdicts = [decide(AttemptOutcome(CONNECT), POLICY, n, rng).verdict for n in range(1, 6)]
    assert verdicts == [Verdict.RETRY] * 4 + [Verdict.FINAL]


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (8, 25.6), (9, 30.0), (50, 30.0), (5000, 30.0)],
)
def test_next_delay_without_jitter_is_capped_exponential(attempt: int, expected: float) -> None:
    assert next_delay(NO_JITTER, attempt, None, random.Random(0)) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 9, 20])
@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5, 1.0])
def test_next_delay_stays_within_jitter_bounds(attempt: int, jitter: float) -> None:
    policy = replace(POLICY, jitter=jitter)
    base = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (attempt - 1))
    low, high = max(0.0, base * (1 - jitter)), base * (1 + jitter)
    rng = random.Random(attempt * 1000 + int(jitter * 10))
    draws = [next_delay(policy, attempt, None, rng) for _ in range(2000)]
    assert all(low <= d <= high for d in draws)
    if jitter:
        # the spread is actually used: draws reach both outer tenths of the band
        band = high - low
        assert min(draws) < low + band / 10
        assert max(draws) > high - band / 10
    else:
        assert set(draws) == {base}


def test_next_delay_is_never_negative() -> None:
    # jitter > 1 is rejected by the config loader; even so, a delay is never negative
    policy = replace(POLICY, jitter=3.0)
    rng = random.Random(3)
    assert all(next_delay(policy, 1, None, rng) >= 0.0 for _ in range(1000))


def test_next_delay_is_reproducible_with_a_seed() -> None:
    a = [next_delay(POLICY, n, None, random.Random(9)) for n in range(1, 6)]
    b = [next_delay(POLICY, n, None, random.Random(9)) for n in range(1, 6)]
    assert a == b


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (1, 5.0, 5.0),  # longer than the backoff: honoured
        (1, 0.0, 0.2),  # shorter: the backoff stands
        (9, 120.0, 120.0),  # honoured past max_backoff
        (1, 10 * 86400.0, MAX_RETRY_AFTER),  # but clamped to a day
        (1, -5.0, 0.2),  # nonsense is a floor of zero
        (1, float("inf"), 0.2),
        (1, float("nan"), 0.2),
    ],
)
def test_next_delay_retry_after(attempt: int, retry_after: float, expected: float) -> None:
    assert next_delay(NO_JITTER, attempt, retry_after, random.Random(0)) == pytest.approx(expected)


def test_next_delay_retry_after_is_a_floor_under_jitter() -> None:
    rng = random.Random(5)
    policy = replace(POLICY, jitter=0.5)
    assert all(next_delay(policy, 3, 0.7, rng) >= 0.7 for _ in range(1000))


def test_next_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        next_delay(POLICY, 0, None, random.Random(0))


NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),  # tolerated
        ("-3", None),
        ("+3", None),
        ("1e3", None),
        ("soon", None),
        ("12 seconds", None),
        ("9" * 400, None),  # not a finite number
        # HTTP-dates, relative to NOW
        ("Tue, 14 Nov 2023 22:15:20 GMT", 120.0),
        ("Tue, 14 Nov 2023 22:13:20 GMT", 0.0),
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # past: no wait
        ("Tue, 14 Nov 2023 22:14:20 -0000", 60.0),  # naive: read as GMT
        ("Tuesday, 14-Nov-23 22:14:20 GMT", 60.0),  # RFC 850 form
        ("Tue, 14 Nov 2023 23:14:20 +0100", 60.0),
        ("Tue, 99 Nov 2023 22:14:20 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)
