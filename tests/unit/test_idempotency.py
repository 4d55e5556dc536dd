"""Idempotency keys: parsing (bare and quoted) and request fingerprints."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.http.idempotency import fingerprint, parse_key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc-123", "abc-123"),
        ('"abc-123"', "abc-123"),
        ('  "8e03978e-40d5-43e8-bc93-6894a57f9324" ', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("x" * 255, "x" * 255),
    ],
)
def test_parse_key(raw: str, key: str) -> None:
    assert parse_key(raw) == key


@pytest.mark.parametrize("raw", ["", "  ", '""', "x" * 256, "bad\x01key"])
def test_parse_key_rejects(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_key(raw)


def test_fingerprint_covers_method_path_query_and_body() -> None:
    base = fingerprint("POST", "/a?x=1", b"body")
    assert base == fingerprint("post", "/a?x=1", b"body")
    assert base != fingerprint("PUT", "/a?x=1", b"body")
    assert base != fingerprint("POST", "/b?x=1", b"body")
    assert base != fingerprint("POST", "/a?x=2", b"body")
    assert base != fingerprint("POST", "/a?x=1", b"bodY")
    assert len(base) == 64
