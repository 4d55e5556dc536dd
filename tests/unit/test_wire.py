"""The Durable-Steps codec and the wire helpers shared by the gateway and the client."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from step_protocol import wire


@pytest.mark.parametrize(
    "steps",
    [
        {"quote": {"total": 42}},
        {"a": None, "b": [1, 2.5, "three"], "c": True, "é/ü:1": "ünïcode ✓"},
        {"loop": 1, "loop:1": 2, "loop:2": 3},
        {"": ""},
    ],
)
def test_encode_decode_round_trip(steps: dict[str, Any]) -> None:
    value = wire.encode_steps(steps)
    assert value is not None
    assert "=" not in value
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert wire.decode_steps(value) == steps


def test_spec_worked_example() -> None:
    """The example in SPEC.md §3, byte for byte."""
    assert wire.encode_steps({"quote": {"total": 42}}) == "eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ"
    assert wire.encode_steps({"note": "a>?"}) == "eyJub3RlIjoiYT4_In0"


def test_no_steps_means_no_header() -> None:
    assert wire.encode_steps({}) is None
    assert wire.decode_steps(None) == {}
    assert wire.decode_steps("") == {}


@pytest.mark.parametrize("pad", [False, True])
def test_decode_accepts_padded_and_unpadded(pad: bool) -> None:
    raw = orjson.dumps({"x": "a>?"})  # length not a multiple of 3: padding exists
    value = base64.urlsafe_b64encode(raw).decode()
    assert value.endswith("=")
    value = value if pad else value.rstrip("=")
    assert wire.decode_steps(value) == {"x": "a>?"}
    assert wire.decode_steps(f"  {value} ") == {"x": "a>?"}


def test_fetch_is_signalled_by_none() -> None:
    assert wire.decode_steps("fetch") is None
    assert wire.decode_steps(" fetch ") is None


def test_fetch_threshold() -> None:
    """Inline up to STEPS_INLINE_MAX characters of header value, `fetch` past it."""

    def steps_of_size(n: int) -> dict[str, Any]:
        overhead = len(orjson.dumps({"s": ""}))
        return {"s": "x" * (n - overhead)}

    def encoded_len(n: int) -> int:
        return len(base64.urlsafe_b64encode(b"x" * n).rstrip(b"="))

    largest = max(n for n in range(3000, 3200) if encoded_len(n) <= wire.STEPS_INLINE_MAX)
    inline = wire.encode_steps(steps_of_size(largest))
    assert inline is not None and inline != wire.STEPS_FETCH
    assert len(inline) <= wire.STEPS_INLINE_MAX
    assert wire.decode_steps(inline) == steps_of_size(largest)
    assert wire.encode_steps(steps_of_size(largest + 1)) == wire.STEPS_FETCH


@pytest.mark.parametrize(
    "value",
    [
        "%%%%",  # no base64 at all
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),  # JSON, but not an object
        base64.urlsafe_b64encode(b'"fetch"').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe{}").decode(),  # not UTF-8
        "eyJ4Ijo",  # truncated: {"x":
        "ünïcode",
    ],
)
def test_malformed_values_raise_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        wire.decode_steps(value)


@pytest.mark.parametrize(
    ("step_id", "segment"),
    [
        ("step-1", "step-1"),
        ("loop:2", "loop%3A2"),
        ("a/b", "a%2Fb"),
        ("fetch page:1/2 é", "fetch%20page%3A1%2F2%20%C3%A9"),  # SPEC.md §4
        ("?#%&=+", "%3F%23%25%26%3D%2B"),
        ("dots.and~tilde_", "dots.and~tilde_"),
        ("..", ".."),
    ],
)
def test_step_path_quotes_one_segment(step_id: str, segment: str) -> None:
    assert wire.step_path(step_id) == segment


@pytest.mark.parametrize(
    ("type_uri", "slug"),
    [
        ("https://durable-gateway.dev/problems/stale-attempt", "stale-attempt"),
        ("stale-attempt", "stale-attempt"),
        ("https://durable-gateway.dev/problems/step-conflict/", "step-conflict"),
        (None, ""),
        (409, ""),
    ],
)
def test_problem_slug(type_uri: object, slug: str) -> None:
    assert wire.problem_slug(type_uri) == slug


def test_bodies() -> None:
    assert orjson.loads(wire.put_output_body({"a": [1]})) == {"output": {"a": [1]}}
    assert orjson.loads(wire.put_output_body(None)) == {"output": None}
    assert orjson.loads(wire.put_error_body("boom")) == {"error": {"message": "boom"}}
    with pytest.raises(TypeError):
        wire.put_output_body(object())


def test_bodies_carry_the_timing_that_was_measured() -> None:
    timed = {"started_at": 1764896523.125, "duration_ms": 812.5}
    assert orjson.loads(wire.put_output_body(0, 1764896523.125, 812.5)) == {"output": 0} | timed
    assert (
        orjson.loads(wire.put_error_body("x", 1764896523.125, 812.5))
        == {"error": {"message": "x"}} | timed
    )
    # What was not measured is left out, not sent as null (SPEC.md §4.3).
    assert orjson.loads(wire.put_output_body(None, duration_ms=0.0)) == {
        "output": None,
        "duration_ms": 0.0,
    }
    assert orjson.loads(wire.put_error_body("x", started_at=5.0)) == {
        "error": {"message": "x"},
        "started_at": 5.0,
    }


def test_gateway_headers_are_the_request_headers() -> None:
    assert wire.GATEWAY_HEADERS == (
        "Durable-Run-Id",
        "Durable-Attempt",
        "Durable-Sidecar",
        "Durable-Token",
        "Durable-Steps",
    )
    assert wire.PROTOCOL_VERSION == 2


# --- sleep and wait (v2) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (2.5, 2.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        (" 1m 30s ", 90.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        (".5s", 0.5),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_parse_duration(value: wire.Duration, seconds: float) -> None:
    assert wire.parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "1 hour", "h", "-5s", "1w", "1.2.3s", "٣s", -1, math.inf, math.nan, True]
)
def test_parse_duration_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        wire.parse_duration(value)
    with pytest.raises(ValueError):
        wire.parse_duration(timedelta(seconds=-1))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (wire.MAX_DURATION + 1, "too long"),
        (1e20, "too long"),
        (1e308, "too long"),
        ("99999999999d", "too long"),
        ("3651d", "too long"),
        (timedelta(days=3651), "too long"),
        ("1" * 100 + "s", "invalid"),  # absurdly long text is refused before it is parsed
        ("1" * 400, "invalid"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (math.nan, "finite"),
        (-0.001, ">= 0"),
        (False, "invalid"),
        (None, "invalid"),
        ([1], "invalid"),
    ],
)
def test_parse_duration_bounds(value: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        wire.parse_duration(value)
    assert len(str(info.value)) < 200  # an absurd value is cut, not echoed whole


def test_parse_duration_ceiling_is_ten_years_and_may_be_lifted() -> None:
    assert wire.MAX_DURATION == 10 * 365 * 86400
    assert wire.parse_duration(wire.MAX_DURATION) == wire.MAX_DURATION
    assert wire.parse_duration("3650d") == wire.MAX_DURATION
    assert wire.parse_duration("3651d", maximum=math.inf) == 3651 * 86400
    with pytest.raises(ValueError, match="at most 5 s"):
        wire.parse_duration(6, maximum=5)


NOW = datetime(2025, 1, 31, 9, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("until", "wake_at"),
    [
        ("2025-01-31T09:30:00Z", NOW),
        ("2025-01-31T10:30:00+01:00", NOW),
        ("1970-01-01T00:00:00Z", 0.0),  # the past is fine: the sleep is over at once
        ("0001-01-01T00:00:00Z", -62135596800.0),
        (datetime(2025, 1, 31, 9, 30, tzinfo=UTC), NOW),
        (datetime.fromtimestamp(NOW + wire.MAX_DURATION, UTC), NOW + wire.MAX_DURATION),
    ],
)
def test_wake_time(until: datetime | str, wake_at: float) -> None:
    assert wire.wake_time(until, NOW) == wake_at


@pytest.mark.parametrize(
    ("until", "why"),
    [
        (wire.format_timestamp(NOW + wire.MAX_DURATION + 1), "too far ahead"),
        ("9999-12-31T23:59:59Z", "too far ahead"),
        ("0001-01-01T00:00:00+01:00", "out of range"),  # year 0 in UTC
        ("9999-12-31T23:59:59-01:00", "out of range"),  # year 10000 in UTC
        ("2025-01-31T09:30:00", "without an offset"),
        ("2025-01-31T09:30:00Z" + " " * 100, "not an RFC 3339"),
        ("soon", "not an RFC 3339"),
        (datetime(2025, 1, 31), "naive"),
    ],
)
def test_wake_time_refuses(until: datetime | str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        wire.wake_time(until, NOW)


def test_match_bounds() -> None:
    paths = {f"data.{'k' * (wire.MAX_MATCH_PATH - 7)}{i:02}": i for i in range(31)}
    largest = paths | {"data.v": "v" * (wire.MAX_MATCH_VALUE - 2)}
    assert wire.check_match(largest) == largest
    assert wire.check_match({}) == {}
    refused = [
        ({f"k{i}": i for i in range(wire.MAX_MATCH_KEYS + 1)}, "at most 32 paths"),
        ({"k" * (wire.MAX_MATCH_PATH + 1): 1}, "at most 256 characters"),
        ({"data.v": "v" * (wire.MAX_MATCH_VALUE - 1)}, "4097 bytes of JSON: at most 4096"),
        ({"data.v": {"deep": ["x" * 5000]}}, "at most 4096"),
        ({"data.v": object()}, "not JSON"),
        ({"a..b": 1}, "dotted path"),
        ({1: 1}, "dotted path"),
        (["data.v"], "maps dotted paths"),
    ]
    for match, why in refused:
        with pytest.raises(ValueError, match=why):
            wire.check_match(match)
        with pytest.raises(ValueError, match=why):
            wire.wait_body("e", match)  # type: ignore[arg-type]


def test_event_name_bounds() -> None:
    assert wire.check_event_name("e" * wire.MAX_EVENT_NAME) == "e" * wire.MAX_EVENT_NAME
    for bad in ("", "e" * (wire.MAX_EVENT_NAME + 1), None, 5):
        with pytest.raises(ValueError, match="1 to 256 characters"):
            wire.check_event_name(bad)
    with pytest.raises(ValueError, match="1 to 256 characters"):
        wire.event_body("e" * (wire.MAX_EVENT_NAME + 1))


def test_timestamps() -> None:
    moment = datetime(2025, 1, 31, 10, 30, 0, 250_999, tzinfo=timezone(timedelta(hours=1)))
    assert wire.format_timestamp(moment) == "2025-01-31T09:30:00.250Z"
    assert wire.format_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert wire.parse_timestamp("2025-01-31T09:30:00.250Z") == datetime(
        2025, 1, 31, 9, 30, 0, 250_000, tzinfo=UTC
    )
    assert wire.parse_timestamp("2025-01-31t10:30:00+01:00") == datetime(
        2025, 1, 31, 9, 30, tzinfo=UTC
    )
    assert wire.parse_timestamp(wire.format_timestamp(1738315800.5)).timestamp() == 1738315800.5
    for bad in ("2025-01-31T09:30:00", "yesterday", ""):
        with pytest.raises(ValueError):
            wire.parse_timestamp(bad)
    with pytest.raises(ValueError, match="naive"):
        wire.format_timestamp(datetime(2025, 1, 31))


def test_sleep_body() -> None:
    assert orjson.loads(wire.sleep_body(5)) == {"seconds": 5}
    assert orjson.loads(wire.sleep_body(0.25)) == {"seconds": 0.25}
    assert orjson.loads(wire.sleep_body(timedelta(minutes=1))) == {"seconds": 60}
    until = datetime(2025, 1, 31, 9, 30, tzinfo=UTC)
    assert orjson.loads(wire.sleep_body(until=until)) == {"until": "2025-01-31T09:30:00.000Z"}
    assert orjson.loads(wire.sleep_body(until="2025-01-31T09:30:00Z")) == {
        "until": "2025-01-31T09:30:00Z"
    }
    for kwargs in ({}, {"seconds": 1, "until": until}):
        with pytest.raises(ValueError, match="exactly one"):
            wire.sleep_body(**kwargs)  # type: ignore[arg-type]
    for bad_seconds in (-1, math.inf, "5s", True):
        with pytest.raises(ValueError):
            wire.sleep_body(bad_seconds)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wire.sleep_body(until="2025-01-31T09:30:00")  # no offset
    for too_far in (datetime.now(UTC) + timedelta(days=3651), "9999-12-31T23:59:59Z"):
        with pytest.raises(ValueError, match="too far ahead"):
            wire.sleep_body(until=too_far)  # refused by the client, before any call
    with pytest.raises(ValueError, match="too long"):
        wire.sleep_body(1e20)


def test_wait_body() -> None:
    assert orjson.loads(wire.wait_body("order.paid")) == {"event": "order.paid"}
    assert orjson.loads(
        wire.wait_body("order.paid", {"data.order_id": "42"}, "1h", timedelta(minutes=10))
    ) == {
        "event": "order.paid",
        "match": {"data.order_id": "42"},
        "timeout": "1h",
        "lookback": 600.0,
    }
    assert orjson.loads(wire.wait_body("e", {}, 0)) == {"event": "e", "timeout": 0}
    with pytest.raises(ValueError):
        wire.wait_body("")
    with pytest.raises(ValueError):
        wire.wait_body("e", timeout="soon")
    with pytest.raises(ValueError):
        wire.wait_body("e", lookback=-1)
    with pytest.raises(ValueError, match="too long"):
        wire.wait_body("e", timeout=1e308)
    with pytest.raises(ValueError, match="too long"):
        wire.wait_body("e", lookback="99999999999d")
    for path in ("", "data.", ".data", "a..b"):
        with pytest.raises(ValueError, match="dotted path"):
            wire.wait_body("e", {path: 1})


def test_event_body() -> None:
    assert orjson.loads(wire.event_body("order.paid", {"order_id": "42"}, "pay_1")) == {
        "name": "order.paid",
        "data": {"order_id": "42"},
        "id": "pay_1",
    }
    assert orjson.loads(wire.event_body("ping")) == {"name": "ping", "data": {}}
    with pytest.raises(ValueError):
        wire.event_body("")


EVENT = {
    "name": "order.paid",
    "id": "pay_1",
    "data": {"order_id": "42", "amount": 1999, "paid": True, "note": None, "user": {"tier": "pro"},
             "tags": ["a", "b"]},
    "ts": "2025-01-31T09:30:00.000Z",
}  # fmt: skip


@pytest.mark.parametrize(
    ("match", "matches"),
    [
        (None, True),
        ({}, True),
        ({"data.order_id": "42"}, True),
        ({"data.order_id": "42", "data.user.tier": "pro"}, True),
        ({"data.order_id": "42", "data.user.tier": "free"}, False),  # all of them must fit
        ({"data.order_id": 42}, False),  # a string is not a number
        ({"data.amount": 1999.0}, True),  # numbers compare by value
        ({"data.paid": 1}, False),  # true is not 1
        ({"data.paid": True}, True),
        ({"data.amount": True}, False),
        ({"data.note": None}, True),
        ({"data.missing": None}, False),  # absent is not null
        ({"data.order_id.x": "42"}, False),  # through a non-object
        ({"data.tags": ["a", "b"]}, True),
        ({"data.tags": ["b", "a"]}, False),
        ({"data.user": {"tier": "pro"}}, True),
        ({"id": "pay_1", "name": "order.paid"}, True),
        ({"order_id": "42"}, False),  # paths start at the event object, not at data
    ],
)
def test_event_matches(match: dict[str, Any] | None, matches: bool) -> None:
    assert wire.event_matches(match, EVENT) is matches


# JSON texts that are awkward to compare: numbers written several ways, around the
# 64-bit and 2**53 edges, booleans against 0 and 1, null, nesting, key order, escapes.
JSON_TEXTS = [
    "1", "1.0", "1e0", "10E-1", "true", "false", "0", "-0", "-0.0", "0.0", "null", '"1"',
    '""', "0.1", "1e2", "100", "100.5", "9007199254740992", "9007199254740993",
    "9007199254740992.0", "18446744073709551615", "18446744073709551616",
    "1.8446744073709552e19", "-9223372036854775808", "-9223372036854775809",
    "[]", "{}", "[1, 2.0]", "[1.0, 2]", "[2, 1]", '{"a": 1, "b": [true]}',
    '{"b": [true], "a": 1.0}', '{"a": 1}', '{"a": null}', r'"\u00e9"', '"\u00e9"',
    r'"\n"', r'"\u000a"', '[{"x": {"y": 1.0}}]', '[{"x": {"y": 1}}]', '[{"x": {"y": true}}]',
]  # fmt: skip


@pytest.mark.parametrize("left", JSON_TEXTS)
def test_canonical_json_is_equal_exactly_when_json_equal(left: str) -> None:
    a = orjson.loads(left)
    for right in JSON_TEXTS:
        b = orjson.loads(right)
        same = wire.canonical_json(a) == wire.canonical_json(b)
        assert same is wire.json_equal(a, b), (left, right)


def test_canonical_json_sorts_keys_and_writes_integral_numbers_as_integers() -> None:
    assert wire.canonical_json({"b": 1.0, "a": [-0.0, 2.5, {"d": 1, "c": 1e2}]}) == (
        b'{"a":[0,2.5,{"c":100,"d":1}],"b":1}'
    )
    with pytest.raises(ValueError, match="not a JSON number"):
        wire.canonical_json(float("inf"))


def test_lookup_names_a_member_or_nothing() -> None:
    assert wire.lookup(EVENT, "data.user.tier") == "pro"
    assert wire.lookup(EVENT, "data.note") is None
    assert wire.lookup(EVENT, "data.missing") is wire.MISSING
    assert wire.lookup(EVENT, "data.tags.0") is wire.MISSING  # arrays are not objects


def test_paths() -> None:
    assert wire.step_path("nap") + wire.SLEEP_SUFFIX == "nap/sleep"
    assert wire.step_path("paid:1") + wire.WAIT_SUFFIX == "paid%3A1/wait"
    assert wire.EVENTS_PATH == "/v1/events"
