"""Result delivery: whether an unfinished run's client is held, sent a 303, or a 202. Pure.

Reads the RFC 7240 `Prefer` header; never touches the connection or the clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

_MAX_WAIT: Final = 1e9


@dataclass(frozen=True, slots=True)
class Prefer:
    """The preferences the gateway understands; the rest are ignored, as RFC 7240 allows."""

    respond_async: bool = False
    """`Prefer: respond-async`: answer 202 with the result URL at once."""
    wait: float | None = None
    """`Prefer: wait=N`: the client would rather not wait longer than N seconds."""


class Delivery(StrEnum):
    HOLD = "hold"
    REDIRECT = "redirect_303"
    ACCEPTED = "accepted_202"


def _split(text: str, sep: str) -> Iterator[str]:
    """Split on `sep` outside double-quoted strings (which may hold `,` `;` and `\\"`)."""
    start = 0
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_prefer(values: Sequence[str]) -> Prefer:
    """The preferences in every `Prefer` header of a request.

    Each header may hold several comma-separated preferences, each with optional
    `;`-parameters (ignored). Names are case-insensitive; values may be quoted. When a
    preference repeats, the first one counts (RFC 7240 §2). A malformed `wait` is
    ignored rather than rejected: a preference is a hint, never a reason for a 400.
    """
    respond_async = False
    wait: float | None = None
    seen: set[str] = set()
    for header in values:
        for preference in _split(header, ","):
            head = next(_split(preference, ";"))
            name, has_value, raw = head.partition("=")
            name = name.strip().lower()
            if not name or name in seen:
                continue
            seen.add(name)
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and has_value:
                text = _unquote(raw)
                if text.isascii() and text.isdigit():
                    # Clamped so that an absurd value stays a finite, printable number.
                    wait = min(float(text), _MAX_WAIT)
    return Prefer(respond_async=respond_async, wait=wait)


def preference_applied(prefer: Prefer, *, honoured_async: bool, honoured_wait: bool) -> str | None:
    """The `Preference-Applied` value echoing what was honoured, or None for no header."""
    parts: list[str] = []
    if prefer.respond_async and honoured_async:
        parts.append("respond-async")
    if prefer.wait is not None and honoured_wait:
        parts.append(f"wait={int(prefer.wait)}")
    return ", ".join(parts) or None


def hold_budget(prefer: Prefer, hold: float) -> float:
    """How long the ingress may hold the client: the route's `hold`, shortened by `wait`."""
    if prefer.wait is None:
        return hold
    return max(0.0, min(hold, prefer.wait))


def choose(prefer: Prefer, elapsed: float, budget: float, next_wake_in: float | None) -> Delivery:
    """How to answer a client whose run is not finished yet.

    Args:
        elapsed: seconds since the request arrived.
        budget: from `hold_budget`.
        next_wake_in: seconds until the run's next attempt when it waits on a retry
            backoff or a timer; None while an attempt is in flight or the wake time is
            unknown (an event wait).

    Redirects early when the next wake is already known to land past the budget:
    holding until then would only delay the 303.
    """
    if prefer.respond_async:
        return Delivery.ACCEPTED
    if elapsed >= budget:
        return Delivery.REDIRECT
    if next_wake_in is not None and elapsed + next_wake_in > budget:
        return Delivery.REDIRECT
    return Delivery.HOLD


def result_wait(prefer: Prefer, default: float = 30.0, cap: float = 300.0) -> float:
    """How long a result URL long-polls: `Prefer: wait`, else `default`, at most `cap`."""
    wanted = default if prefer.wait is None else prefer.wait
    return max(0.0, min(wanted, cap))
