"""The step protocol on the wire: header names, the Durable-Steps codec, body shapes.

Shared by the gateway and the reference client so the two cannot drift apart.
Pure: no I/O here. See SPEC.md for the prose version.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import orjson

PROTOCOL_VERSION: Final = 2

# Request headers the gateway adds to every attempt.
RUN_ID: Final = "Durable-Run-Id"
ATTEMPT: Final = "Durable-Attempt"
SIDECAR: Final = "Durable-Sidecar"
TOKEN: Final = "Durable-Token"
STEPS: Final = "Durable-Steps"
# Response header a backend sets to make a failure final.
RETRY: Final = "Durable-Retry"
RETRY_NO: Final = "no"
"""The one `Durable-Retry` value defined in v1: this failure is final."""

# Response header the gateway adds to every durable response, for the client.
RESULT: Final = "Durable-Result"
"""The run's result URL: where a client that lost its connection comes back."""

GATEWAY_HEADERS: Final = (RUN_ID, ATTEMPT, SIDECAR, TOKEN, STEPS)
"""Headers a client may not send through: the gateway strips and sets them."""

STEPS_FETCH: Final = "fetch"
"""Durable-Steps value meaning: too large for a header, call `GET {base}/steps`."""
STEPS_INLINE_MAX: Final = 4096
"""Longest inline Durable-Steps value; well under common 8 KiB header limits."""

MAX_STEP_ID: Final = 256
"""Longest step id, in characters."""


def encode_steps(steps: dict[str, Any]) -> str | None:
    """Durable-Steps value for completed steps: None when empty, `fetch` when too big."""
    if not steps:
        return None
    return encode_step_bytes(orjson.dumps(steps))


def encode_step_bytes(json_object: bytes) -> str:
    """Durable-Steps value for an already-serialized `{step_id: output}` object."""
    if len(json_object) * 4 // 3 > STEPS_INLINE_MAX:
        return STEPS_FETCH
    return base64.urlsafe_b64encode(json_object).rstrip(b"=").decode("ascii")


def decode_steps(value: str | None) -> dict[str, Any] | None:
    """Completed steps from a Durable-Steps value; None means `fetch` them.

    Accepts padded and unpadded base64url. Raises ValueError on a malformed value.
    """
    if not value:
        return {}
    value = value.strip()
    if value == STEPS_FETCH:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        steps = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"malformed {STEPS} header: {exc}") from exc
    if not isinstance(steps, dict):
        raise ValueError(f"{STEPS} must encode a JSON object")
    return steps


def step_path(step_id: str) -> str:
    """The URL path segment for a step id (ids are opaque: quote everything)."""
    return quote(step_id, safe="")


SLEEP_SUFFIX: Final = "/sleep"
"""Appended to a step's path: `POST {base}/steps/{id}/sleep` starts or checks a sleep."""
WAIT_SUFFIX: Final = "/wait"
"""Appended to a step's path: `POST {base}/steps/{id}/wait` starts or checks an event wait."""
EVENTS_PATH: Final = "/v1/events"
"""Where events are posted, on the admin listener (not the sidecar)."""

SYNC_QUERY: Final = "durable=sync"
"""Query string of a step write that must be answered only once committed."""

# Problem `type` slugs a backend acts on; the full `type` is a URI ending in the slug.
PROBLEM_STALE_ATTEMPT: Final = "stale-attempt"
PROBLEM_STEP_CONFLICT: Final = "step-conflict"


def problem_slug(type_uri: object) -> str:
    """The slug of a problem `type` (its last path segment), `""` when absent."""
    if not isinstance(type_uri, str):
        return ""
    return type_uri.rstrip("/").rsplit("/", 1)[-1]


# Sidecar bodies.
STARTED_AT: Final = "started_at"
"""Step PUT member: when the step's work began (Unix seconds, or RFC 3339). Optional."""
DURATION_MS: Final = "duration_ms"
"""Step PUT member: how long the step's work took, in milliseconds. Optional."""


def put_output_body(
    output: Any, started_at: float | None = None, duration_ms: float | None = None
) -> bytes:
    """Body of `PUT {base}/steps/{id}` that records a completed step, with its timing
    when measured (SPEC.md §4.3)."""
    return orjson.dumps(_timed({"output": output}, started_at, duration_ms))


def put_error_body(
    message: str, started_at: float | None = None, duration_ms: float | None = None
) -> bytes:
    """Body of `PUT {base}/steps/{id}` that records a failed try of a step, with its
    timing when measured (SPEC.md §4.4)."""
    return orjson.dumps(_timed({"error": {"message": message}}, started_at, duration_ms))


def _timed(
    body: dict[str, Any], started_at: float | None, duration_ms: float | None
) -> dict[str, Any]:
    """`body` with the timing members that were measured; absent ones are left out."""
    if started_at is not None:
        body[STARTED_AT] = started_at
    if duration_ms is not None:
        body[DURATION_MS] = duration_ms
    return body


# Sleep and wait (protocol v2).
Duration = float | str | timedelta
"""Seconds as a number, a duration string (`250ms`, `30s`, `1h30m`, `7d`) or a timedelta."""

MAX_DURATION: Final = 10 * 365 * 86400
"""Longest sleep, wait `timeout` or `lookback`, in seconds: 10 years (315,360,000 s).

Long enough for any real reminder, and far from where a wake time overflows a
timestamp; the sidecar refuses more with `400` before it stores anything.
"""
MAX_DURATION_TEXT: Final = "10 years (315360000 s)"
MAX_TEXT: Final = 64
"""Longest duration or timestamp string, in characters: no real one comes near it."""
MAX_EVENT_NAME: Final = 256
"""Longest event name, in characters, in a wait and in a posted event."""
MAX_MATCH_KEYS: Final = 32
"""Most paths in one wait's `match`."""
MAX_MATCH_PATH: Final = 256
"""Longest dotted path in a wait's `match`, in characters."""
MAX_MATCH_VALUE: Final = 4096
"""Largest value a `match` path must equal, in bytes of JSON."""

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER: Final = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # ASCII digits only
_DURATION: Final = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+|{_NUMBER}")
_DURATION_PART: Final = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")


def parse_duration(value: Duration, *, maximum: float = MAX_DURATION) -> float:
    """Seconds in a sleep, `timeout` or `lookback`; raises ValueError unless 0..`maximum`.

    Strings are `<number><unit>` parts run together (`1h30m`), units ms, s, m, h, d,
    or a bare number of seconds: the grammar of the gateway's config durations.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TEXT or not _DURATION.fullmatch(text):
            raise ValueError(
                f"invalid duration {_short(value)}: use e.g. 250ms, 30s, 5m, 1h30m, 7d"
            )
        parts = _DURATION_PART.findall(text)
        seconds = sum(float(n) * _UNITS[u] for n, u in parts) if parts else float(text)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(
            f"invalid duration {_short(value)}: a number of seconds or a string like 30s"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {_short(value)}: must be finite and >= 0")
    if seconds > maximum:
        limit = MAX_DURATION_TEXT if maximum == MAX_DURATION else f"{maximum:g} s"
        raise ValueError(f"duration {_short(value)} is too long: at most {limit}")
    return seconds


def _short(value: object) -> str:
    """`repr` of a value for an error message, cut so an absurd one cannot flood it."""
    text = repr(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def format_timestamp(when: datetime | float) -> str:
    """RFC 3339 in UTC with milliseconds, `2025-01-31T09:30:00.250Z`; a float is epoch seconds."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("a naive datetime is ambiguous: give it a timezone")
        moment = when.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(when, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """An aware datetime from an RFC 3339 timestamp; raises ValueError without an offset,
    or for a time that is out of range in UTC (years 1 to 9999)."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError(f"not an RFC 3339 timestamp: {_short(text)}")
    try:
        # RFC 3339 allows a lower-case `t` and `z`; fromisoformat wants them upper-case.
        moment = datetime.fromisoformat(text.strip().upper())
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from exc
    if moment.tzinfo is None:
        raise ValueError(f"RFC 3339 timestamp without an offset: {text!r}")
    _in_utc(moment)
    return moment


def _in_utc(moment: datetime) -> datetime:
    """`moment` in UTC; ValueError when that falls outside years 1 to 9999."""
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"timestamp {moment.isoformat()} is out of range") from None


def wake_time(until: datetime | str, now: float) -> float:
    """Epoch seconds of a sleep's `until`; ValueError past `now` + MAX_DURATION.

    A time in the past is fine (the sleep is over at once).
    """
    moment = parse_timestamp(until) if isinstance(until, str) else until
    if moment.tzinfo is None:
        raise ValueError("a naive datetime is ambiguous: give it a timezone")
    wake_at = _in_utc(moment).timestamp()
    if wake_at > now + MAX_DURATION:
        raise ValueError(f"until is too far ahead: at most {MAX_DURATION_TEXT} from now")
    return wake_at


def sleep_body(
    seconds: float | timedelta | None = None, until: datetime | str | None = None
) -> bytes:
    """Body of `POST {base}/steps/{id}/sleep`: exactly one of `seconds` (>= 0) and `until`."""
    if (seconds is None) == (until is None):
        raise ValueError("sleep needs exactly one of seconds and until")
    if until is not None:
        wake_time(until, time.time())  # refuse it here rather than as a 400 from the sidecar
        if isinstance(until, datetime):
            return orjson.dumps({"until": format_timestamp(until)})
        return orjson.dumps({"until": until})
    assert seconds is not None
    if isinstance(seconds, str):  # a duration string is a wait's, not a sleep's
        raise ValueError(f"sleep seconds must be a number, not {seconds!r}")
    amount = parse_duration(seconds)
    return orjson.dumps({"seconds": int(amount) if amount.is_integer() else amount})


def wait_body(
    event: str,
    match: Mapping[str, Any] | None = None,
    timeout: Duration | None = None,
    lookback: Duration | None = None,
) -> bytes:
    """Body of `POST {base}/steps/{id}/wait`; absent options are left out of it.

    Durations are checked here and sent as given (a timedelta as seconds).
    """
    body: dict[str, Any] = {"event": check_event_name(event)}
    if match:
        body["match"] = check_match(match)
    for name, value in (("timeout", timeout), ("lookback", lookback)):
        if value is not None:
            seconds = parse_duration(value)
            body[name] = seconds if isinstance(value, timedelta) else value
    return orjson.dumps(body)


def check_event_name(name: object) -> str:
    """An event name: a non-empty string of at most MAX_EVENT_NAME characters, without
    U+0000 (which no store's text column holds)."""
    if not isinstance(name, str) or not name or len(name) > MAX_EVENT_NAME or "\x00" in name:
        raise ValueError(
            f"an event name is a string of 1 to {MAX_EVENT_NAME} characters, without U+0000"
        )
    return name


def check_match(match: object) -> dict[str, Any]:
    """A wait's `match`: at most MAX_MATCH_KEYS dotted paths (each at most MAX_MATCH_PATH
    characters, no empty segment) to JSON values of at most MAX_MATCH_VALUE bytes."""
    if not isinstance(match, Mapping):
        raise ValueError("a match maps dotted paths to values")
    if len(match) > MAX_MATCH_KEYS:
        raise ValueError(f"a match has at most {MAX_MATCH_KEYS} paths, not {len(match)}")
    for path, value in match.items():
        if not isinstance(path, str) or not path or "" in path.split("."):
            raise ValueError(f"a match key is a dotted path like data.order_id, not {_short(path)}")
        if len(path) > MAX_MATCH_PATH:
            raise ValueError(f"a match path is at most {MAX_MATCH_PATH} characters")
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"match value of {path!r} is not JSON: {exc}") from None
        if size > MAX_MATCH_VALUE:
            raise ValueError(
                f"match value of {path!r} is {size} bytes of JSON: at most {MAX_MATCH_VALUE}"
            )
    return dict(match)


def event_body(
    name: str, data: Mapping[str, Any] | None = None, event_id: str | None = None
) -> bytes:
    """Body of `POST /v1/events` (admin listener); `event_id` de-duplicates repeated posts."""
    body: dict[str, Any] = {"name": check_event_name(name), "data": dict(data or {})}
    if event_id is not None:
        body["id"] = event_id
    return orjson.dumps(body)


def event_output(event_id: str, name: str, data: Any, ts: float) -> dict[str, Any]:
    """A delivered event as a wait step's output: `name`, `id`, `data`, RFC 3339 `ts`."""
    return {"name": name, "id": event_id, "data": data, "ts": format_timestamp(ts)}


MISSING: Final = object()
"""What `lookup` returns for a path that leads nowhere (never a JSON value)."""


def lookup(event: Mapping[str, Any], path: str) -> Any:
    """The member a dotted path names in an event object; MISSING when absent."""
    node: Any = event
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return MISSING
        node = node[key]
    return node


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (1 == 1.0), but `true` is not `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# Integers a JSON parser gives as int (orjson: 64-bit signed or unsigned); past them it
# gives floats, which then stay floats here, so an integral float never meets its int.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def _normal(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a JSON number: {value!r}")
        # int(x) is exact for an integral float, and Python compares int with float
        # exactly, so this keeps `json_equal` (1.0 == 1, -0.0 == 0) and nothing more.
        return int(value) if value.is_integer() and _INT_MIN <= value <= _INT_MAX else value
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    return value


def canonical_json(value: Any) -> bytes:
    """JSON bytes that are equal for two parsed JSON values exactly when `json_equal`
    holds: object keys sorted, integral numbers written as integers (`1.0` as `1`).

    What lets a store find the waits an event fits by equality of bytes (an index)
    instead of calling `event_matches` on each.
    """
    return orjson.dumps(_normal(value), option=orjson.OPT_SORT_KEYS)


def event_matches(match: Mapping[str, Any] | None, event: Mapping[str, Any]) -> bool:
    """Whether an event object (`name`, `id`, `data`, `ts`) fits every path of a wait's `match`.

    A path that leads nowhere (a missing member, or through a non-object) never matches,
    not even an expected `null`.
    """
    for path, expected in (match or {}).items():
        found = lookup(event, path)
        if found is MISSING or not json_equal(found, expected):
            return False
    return True
