"""Stored credentials: sealed per run and header, opened under current or previous
secrets, passed through when stored in the clear, and redacted for operators."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.engine.credentials import PREFIX, REDACTED, Credentials
from gateway.store import Headers, StoredRequest

RUN = "0192c4a1b2c3d4e5f6a7b8"
CREDS = Credentials([b"current-secret"], sensitive=["X-Api-Key"])
HEADERS: Headers = [
    ("Host", "api.example"),
    ("Authorization", "Bearer client-token-123"),
    ("cookie", "session=abc; theme=dark"),
    ("Proxy-Authorization", "Basic cHJveHk6cHc="),
    ("X-API-KEY", "key-456"),
    ("Accept", "application/json"),
]
SECRETS = ("client-token-123", "session=abc", "cHJveHk6cHc=", "key-456")


def request(headers: Headers) -> StoredRequest:
    return StoredRequest("POST", "/pay?x=1", headers, b'{"amount": 5}')


def test_sensitive_values_are_sealed_and_the_rest_kept() -> None:
    sealed = CREDS.seal(RUN, request(HEADERS))
    kept = dict(sealed.headers)
    assert [name for name, _ in sealed.headers] == [name for name, _ in HEADERS]
    assert kept["Host"] == "api.example" and kept["Accept"] == "application/json"
    for name in ("Authorization", "cookie", "Proxy-Authorization", "X-API-KEY"):
        assert kept[name].startswith(PREFIX)
    text = repr(sealed)
    assert not any(secret in text for secret in SECRETS)
    assert (sealed.method, sealed.path_qs, sealed.body) == ("POST", "/pay?x=1", b'{"amount": 5}')


def test_sealed_values_open_to_the_original_request() -> None:
    original = request(HEADERS)
    opened, unreadable = CREDS.open(RUN, CREDS.seal(RUN, original))
    assert opened == original and unreadable == []


def test_a_request_without_credentials_is_the_same_object() -> None:
    plain = request([("Host", "a"), ("Accept", "*/*")])
    assert CREDS.seal(RUN, plain) is plain
    assert CREDS.open(RUN, plain) == (plain, [])


def test_each_seal_takes_a_fresh_nonce() -> None:
    one = CREDS.seal(RUN, request(HEADERS)).headers[1][1]
    two = CREDS.seal(RUN, request(HEADERS)).headers[1][1]
    assert one != two


def test_values_stored_in_the_clear_before_sealing_still_replay() -> None:
    old_row = request(HEADERS)  # a row written before this version sealed anything
    assert CREDS.open(RUN, old_row) == (old_row, [])


def test_a_sealed_value_moved_to_another_run_or_header_does_not_open() -> None:
    sealed = CREDS.seal(RUN, request([("Authorization", "Bearer t")])).headers[0][1]
    _, unreadable = CREDS.open("another-run", request([("Authorization", sealed)]))
    assert unreadable == ["Authorization"]
    opened, unreadable = CREDS.open(RUN, request([("Cookie", sealed), ("Host", "h")]))
    assert unreadable == ["Cookie"] and opened.headers == [("Host", "h")]


@pytest.mark.parametrize(
    "value",
    [
        PREFIX,
        PREFIX + "nokey",
        PREFIX + "AAAAAAAA:",
        PREFIX + "AAAAAAAA:@@@",
        PREFIX + "AAAAAAAA:é",
        PREFIX + "AAAAAAAA:" + base64.urlsafe_b64encode(b"\0" * 40).decode(),
    ],
)
def test_a_damaged_sealed_value_is_left_out_without_raising(value: str) -> None:
    opened, unreadable = CREDS.open(RUN, request([("Authorization", value), ("A", "b")]))
    assert unreadable == ["Authorization"] and opened.headers == [("A", "b")]


def test_a_flipped_ciphertext_byte_is_caught() -> None:
    sealed = CREDS.seal(RUN, request([("Authorization", "Bearer t")])).headers[0][1]
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert CREDS.open(RUN, request([("Authorization", flipped)]))[1] == ["Authorization"]


def test_a_client_value_that_looks_sealed_is_sealed_too_and_comes_back() -> None:
    # Otherwise opening would have to guess whether a stored value is sealed.
    tricky = request([("X-Note", PREFIX + "AAAAAAAA:not-really")])
    sealed = CREDS.seal(RUN, tricky)
    assert sealed.headers[0][1] != tricky.headers[0][1]
    assert CREDS.open(RUN, sealed) == (tricky, [])


def test_non_utf8_header_bytes_round_trip() -> None:
    odd = request([("Authorization", "Bearer caf\udce9")])  # aiohttp's surrogateescape
    assert CREDS.open(RUN, CREDS.seal(RUN, odd)) == (odd, [])


def test_previous_secrets_open_what_they_sealed_and_the_current_one_seals() -> None:
    old = Credentials([b"old-secret"])
    rotated = Credentials([b"new-secret", b"old-secret"])
    written_before = old.seal(RUN, request(HEADERS))
    assert rotated.open(RUN, written_before) == (request(HEADERS), [])
    written_after = rotated.seal(RUN, request(HEADERS))
    assert Credentials([b"new-secret"]).open(RUN, written_after)[1] == []
    assert old.open(RUN, written_after)[1] == ["Authorization", "cookie", "Proxy-Authorization"]


def test_without_the_old_secret_its_values_are_left_out() -> None:
    written = Credentials([b"old-secret"]).seal(RUN, request(HEADERS))
    opened, unreadable = Credentials([b"new-secret"]).open(RUN, written)
    assert unreadable == ["Authorization", "cookie", "Proxy-Authorization"]
    assert [name for name, _ in opened.headers] == ["Host", "X-API-KEY", "Accept"]


def test_the_sealing_key_is_not_the_secret() -> None:
    secret = b"s" * 32
    sealed = Credentials([secret]).seal(RUN, request([("Authorization", "x")])).headers[0][1]
    raw = base64.urlsafe_b64decode(sealed.rsplit(":", 1)[1] + "==")
    with pytest.raises(InvalidTag):
        AESGCM(secret).decrypt(raw[:12], raw[12:], None)


def test_redaction_hides_sensitive_and_sealed_values_only() -> None:
    shown = CREDS.redact(CREDS.seal(RUN, request(HEADERS)).headers)
    assert shown == [
        ("Host", "api.example"),
        ("Authorization", REDACTED),
        ("cookie", REDACTED),
        ("Proxy-Authorization", REDACTED),
        ("X-API-KEY", REDACTED),
        ("Accept", "application/json"),
    ]
    assert CREDS.redact(HEADERS) == shown  # a live run's headers are in the clear
    # A value sealed under a header since dropped from sensitive_headers is still hidden.
    api_key = dict(CREDS.seal(RUN, request(HEADERS)).headers)["X-API-KEY"]
    assert Credentials([b"current-secret"]).redact([("X-Api-Key", api_key)]) == [
        ("X-Api-Key", REDACTED)
    ]


def test_from_text_lists_the_current_secret_first() -> None:
    creds = Credentials.from_text("new", ["old"], ["X-Token"])
    sealed = creds.seal(RUN, request([("x-token", "t")]))
    assert Credentials([b"new"]).open(RUN, sealed)[1] == []
    assert Credentials([b"old"]).open(RUN, sealed)[1] == ["x-token"]


@pytest.mark.parametrize("secrets", [[], [b""], [b"ok", b""]])
def test_empty_secrets_are_refused(secrets: list[bytes]) -> None:
    with pytest.raises(ValueError):
        Credentials(secrets)
