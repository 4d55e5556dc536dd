"""Delivery: Prefer parsing (RFC 7240), Preference-Applied, hold budget, hold/303/202."""

from __future__ import annotations

import pytest

from gateway.http.delivery import (
    Delivery,
    Prefer,
    choose,
    hold_budget,
    parse_prefer,
    preference_applied,
    result_wait,
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], Prefer()),
        ([""], Prefer()),
        (["respond-async"], Prefer(respond_async=True)),
        (["Respond-Async"], Prefer(respond_async=True)),  # tokens are case-insensitive
        (["wait=5"], Prefer(wait=5.0)),
        (["WAIT = 5"], Prefer(wait=5.0)),  # optional whitespace around "="
        (['wait="7"'], Prefer(wait=7.0)),  # quoted value
        (["respond-async, wait=10"], Prefer(respond_async=True, wait=10.0)),
        (["respond-async", "wait=10"], Prefer(respond_async=True, wait=10.0)),  # 2 headers
        (["  respond-async ,wait=3  "], Prefer(respond_async=True, wait=3.0)),
        (["wait=0"], Prefer(wait=0.0)),
        # first instance wins (RFC 7240 §2)
        (["wait=5, wait=9"], Prefer(wait=5.0)),
        (["wait=5", "wait=9"], Prefer(wait=5.0)),
        (["wait=x, wait=9"], Prefer(wait=None)),
        # parameters after ";" are ignored, quoted "," and ";" do not split
        (["respond-async; foo=bar, wait=4"], Prefer(respond_async=True, wait=4.0)),
        (['foo="a,b;c", wait=6'], Prefer(wait=6.0)),
        (['foo="say \\"hi\\", ok", respond-async'], Prefer(respond_async=True)),
        # unknown and ignored preferences
        (["return=minimal"], Prefer()),
        (["return=representation, handling=lenient, wait=2"], Prefer(wait=2.0)),
        # malformed waits are ignored, never an error
        (["wait"], Prefer()),
        (["wait="], Prefer()),
        (["wait=-1"], Prefer()),
        (["wait=1.5"], Prefer()),
        (["wait=abc"], Prefer()),
        (["wait=٣"], Prefer()),  # a non-ASCII digit
        (["wait=" + "9" * 500], Prefer(wait=1e9)),  # absurd: clamped, still a number
        ([",,, ,"], Prefer()),
    ],
)
def test_parse_prefer(headers: list[str], expected: Prefer) -> None:
    assert parse_prefer(headers) == expected


@pytest.mark.parametrize(
    ("prefer", "honoured_async", "honoured_wait", "expected"),
    [
        (Prefer(), True, True, None),
        (Prefer(respond_async=True), True, False, "respond-async"),
        (Prefer(respond_async=True), False, False, None),
        (Prefer(wait=5.0), False, True, "wait=5"),
        (Prefer(wait=5.0), False, False, None),
        (Prefer(respond_async=True, wait=5.0), True, True, "respond-async, wait=5"),
        (Prefer(respond_async=True, wait=5.0), False, True, "wait=5"),
        (Prefer(wait=0.0), False, True, "wait=0"),
    ],
)
def test_preference_applied(
    prefer: Prefer, honoured_async: bool, honoured_wait: bool, expected: str | None
) -> None:
    got = preference_applied(prefer, honoured_async=honoured_async, honoured_wait=honoured_wait)
    assert got == expected


@pytest.mark.parametrize(
    ("prefer", "hold", "expected"),
    [
        (Prefer(), 10.0, 10.0),
        (Prefer(wait=3.0), 10.0, 3.0),
        (Prefer(wait=60.0), 10.0, 10.0),  # wait bounds the hold, never extends it
        (Prefer(wait=0.0), 10.0, 0.0),
        (Prefer(respond_async=True), 10.0, 10.0),
    ],
)
def test_hold_budget(prefer: Prefer, hold: float, expected: float) -> None:
    assert hold_budget(prefer, hold) == expected


HOLD, REDIRECT, ACCEPTED = Delivery.HOLD, Delivery.REDIRECT, Delivery.ACCEPTED


@pytest.mark.parametrize(
    ("prefer", "elapsed", "budget", "next_wake_in", "expected"),
    [
        # respond-async: 202 whatever the timing
        (Prefer(respond_async=True), 0.0, 10.0, None, ACCEPTED),
        (Prefer(respond_async=True), 99.0, 10.0, 1.0, ACCEPTED),
        # within budget, attempt in flight: hold
        (Prefer(), 0.0, 10.0, None, HOLD),
        (Prefer(), 9.9, 10.0, None, HOLD),
        # budget spent: 303
        (Prefer(), 10.0, 10.0, None, REDIRECT),
        (Prefer(), 12.0, 10.0, None, REDIRECT),
        # a retry backoff that fits the budget: hold; one that lands past it: 303 now
        (Prefer(), 1.0, 10.0, 2.0, HOLD),
        (Prefer(), 1.0, 10.0, 9.0, HOLD),  # lands exactly on the budget
        (Prefer(), 1.0, 10.0, 9.5, REDIRECT),
        (Prefer(), 0.0, 10.0, 3600.0, REDIRECT),  # a durable sleep of an hour
        # wait=0 leaves no budget
        (Prefer(wait=0.0), 0.0, 0.0, None, REDIRECT),
    ],
)
def test_choose(
    prefer: Prefer, elapsed: float, budget: float, next_wake_in: float | None, expected: Delivery
) -> None:
    assert choose(prefer, elapsed, budget, next_wake_in) is expected


def test_choose_with_budget_from_prefer_wait() -> None:
    prefer = parse_prefer(["wait=2"])
    budget = hold_budget(prefer, 10.0)
    assert choose(prefer, 1.0, budget, None) is HOLD
    assert choose(prefer, 1.0, budget, 1.5) is REDIRECT
    assert choose(prefer, 2.0, budget, None) is REDIRECT


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        (Prefer(), 30.0),
        (Prefer(wait=5.0), 5.0),
        (Prefer(wait=0.0), 0.0),
        (Prefer(wait=10_000.0), 300.0),  # capped
        (Prefer(respond_async=True), 30.0),
    ],
)
def test_result_wait(prefer: Prefer, expected: float) -> None:
    assert result_wait(prefer) == expected


def test_result_wait_custom_default_and_cap() -> None:
    assert result_wait(Prefer(), default=12.0, cap=60.0) == 12.0
    assert result_wait(Prefer(), default=120.0, cap=60.0) == 60.0
    assert result_wait(Prefer(wait=45.0), default=12.0, cap=40.0) == 40.0
