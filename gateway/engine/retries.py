"""Retry decisions: an attempt's outcome and the route's policy → retry after a delay, or final.

Pure: no clock and no global randomness; `now` and `rng` come from the caller.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Final

from gateway.config import RetryPolicy

MAX_RETRY_AFTER: Final = 24 * 3600.0
"""Ceiling on an upstream's Retry-After: a typo or a hostile header must not park a run."""

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class OutcomeKind(StrEnum):
    """How an attempt ended; the error kinds are the names used in `retry.on`."""

    RESPONSE = "response"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"


@dataclass(slots=True)  # not frozen: built per request (see gateway.store)
class AttemptOutcome:
    """What `attempts.py` makes of one attempt: data, not an exception."""

    kind: OutcomeKind
    status: int | None = None
    """The upstream's status, for RESPONSE."""
    retry_after: float | None = None
    """The upstream's Retry-After, in seconds from now (see `parse_retry_after`)."""
    no_retry: bool = False
    """The upstream said `Durable-Retry: no`."""
    detail: str | None = None
    """Human text for errors, e.g. the connect error's message."""


class Verdict(StrEnum):
    RETRY = "retry"
    FINAL = "final"


@dataclass(slots=True)  # not frozen: built per request (see gateway.store)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    """Seconds to wait before the next attempt, for RETRY."""
    reason: str = ""
    """Short human text for logs and the runs API."""
    exhausted: bool = False
    """Final only because the attempts ran out (a route may pause instead)."""


def decide(
    outcome: AttemptOutcome, policy: RetryPolicy, attempt: int, rng: random.Random
) -> Decision:
    """Retry or stop after attempt number `attempt` (1-based) ended with `outcome`.

    Why an outcome is final is checked before exhaustion, so the reason names the
    cause ("status 404 is not retriable") rather than the count when both hold.
    """
    if outcome.no_retry:
        return Decision(Verdict.FINAL, reason="upstream said Durable-Retry: no")
    if outcome.kind is OutcomeKind.RESPONSE:
        if outcome.status is None:
            return Decision(Verdict.FINAL, reason="response without a status")
        if outcome.status not in policy.on_status:
            return Decision(Verdict.FINAL, reason=f"status {outcome.status} is not retriable")
        cause = f"status {outcome.status} is retriable"
    elif outcome.kind.value not in policy.on_errors:
        return Decision(Verdict.FINAL, reason=f"{outcome.kind.value} is not retriable")
    else:
        cause = f"{outcome.kind.value} is retriable"
    if attempt >= policy.max_attempts:
        return Decision(
            Verdict.FINAL,
            reason=f"attempts exhausted ({attempt} of {policy.max_attempts})",
            exhausted=True,
        )
    delay = next_delay(policy, attempt, outcome.retry_after, rng)
    return Decision(Verdict.RETRY, delay=delay, reason=cause)


def next_delay(
    policy: RetryPolicy, attempt: int, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds to wait after attempt `attempt` (>= 1) before the next one.

    Exponential backoff capped at `max_backoff`, spread by ± `jitter` so that clients
    failing together do not retry together. An upstream's Retry-After is a floor: it may
    push the delay past `max_backoff` (the upstream knows best), up to `MAX_RETRY_AFTER`.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    try:
        grown = policy.initial_backoff * policy.multiplier ** (attempt - 1)
    except OverflowError:
        grown = math.inf
    base = min(policy.max_backoff, grown)
    delay = max(0.0, rng.uniform(base * (1 - policy.jitter), base * (1 + policy.jitter)))
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, min(max(retry_after, 0.0), MAX_RETRY_AFTER))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from `now` (unix time) that a `Retry-After` value asks for; None if unusable.

    Takes delta-seconds (a decimal is tolerated) or an HTTP-date; a date in the past
    means 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" (and obsolete zone-less forms) parse as naive; HTTP-dates are GMT.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
