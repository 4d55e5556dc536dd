"""The Durable-Steps codec and the wire helpers shared by the gateway and the client."""

from __future__ import annotations

import base64
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


def test_gateway_headers_are_the_request_headers() -> None:
    assert wire.GATEWAY_HEADERS == (
        "Durable-Run-Id",
        "Durable-Attempt",
        "Durable-Sidecar",
        "Durable-Token",
        "Durable-Steps",
    )
    assert wire.PROTOCOL_VERSION == 1
