"""Idempotency keys: parsing (bare and quoted), callers' scopes and request fingerprints."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.http.idempotency import (
    ANONYMOUS,
    fingerprint,
    parse_key,
    scope,
    scoped,
    unscoped,
)


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


AUTH = ("header:authorization",)


def test_scope_is_the_callers_credentials() -> None:
    alice = scope(AUTH, {"Authorization": "Bearer alice"}, {}, "10.0.0.1")
    assert alice == scope(AUTH, {"authorization": "Bearer alice"}, {}, "10.0.0.2")
    assert alice != scope(AUTH, {"Authorization": "Bearer bob"}, {}, "10.0.0.1")
    assert len(alice) == 64 and "alice" not in alice  # a hash: no credential is stored
    assert (
        scope(AUTH, {}, {}, "10.0.0.1") == ANONYMOUS == scope(AUTH, {"Authorization": ""}, {}, None)
    )


def test_scope_takes_every_part_named() -> None:
    specs = ("header:authorization", "header:x-tenant-id", "ip")
    base = scope(specs, {"Authorization": "t", "X-Tenant-Id": "a"}, {}, "10.0.0.1")
    assert base != scope(specs, {"Authorization": "t", "X-Tenant-Id": "b"}, {}, "10.0.0.1")
    assert base != scope(specs, {"Authorization": "t", "X-Tenant-Id": "a"}, {}, "10.0.0.2")
    assert scope(specs, {}, {}, "10.0.0.1") != ANONYMOUS  # the address alone is someone
    # Values cannot shift from one part into the next.
    assert scope(("query:a", "query:b"), {}, {"a": "xy", "b": "z"}, None) != scope(
        ("query:a", "query:b"), {}, {"a": "x", "b": "yz"}, None
    )
    assert scope((), {"Authorization": "t"}, {}, "10.0.0.1") == ANONYMOUS  # one scope for all


@pytest.mark.parametrize("key", ["k", "order 42", "a\\tb", ANONYMOUS])
def test_scoped_key_round_trips_and_never_equals_a_bare_one(key: str) -> None:
    stored = scoped(ANONYMOUS, key)
    assert unscoped(stored) == key
    assert stored != key
    with pytest.raises(BadRequest):  # no client key (nor one stored before scopes) is one
        parse_key(stored)
