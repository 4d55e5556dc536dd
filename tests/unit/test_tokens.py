"""Tokens: attempt and result capabilities round-trip, bind to run and attempt, reject junk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

import pytest

from gateway.engine.tokens import Tokens, new_run_id, new_secret, random_bytes

SECRET = b"test-secret-0123456789"
TOKENS = Tokens(SECRET)
RUN = "Zx3kP9q2LmN8vB4tR7wY1a"
URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


def test_attempt_token_format_matches_the_documented_mac() -> None:
    mac = hmac.new(SECRET, b"attempt\0" + RUN.encode() + b"\0" + b"3", hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()
    assert TOKENS.attempt_token(RUN, 3) == f"3.{expected}"


def test_result_token_format_matches_the_documented_mac() -> None:
    mac = hmac.new(SECRET, b"result\0" + RUN.encode(), hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()
    assert TOKENS.result_token(RUN) == expected
    assert len(expected) == 22 and URLSAFE.fullmatch(expected)


@pytest.mark.parametrize("attempt", [1, 2, 9, 10, 123456])
def test_attempt_token_round_trip(attempt: int) -> None:
    token = TOKENS.attempt_token(RUN, attempt)
    assert token.startswith(f"{attempt}.")
    assert TOKENS.check_attempt_token(RUN, token) == attempt


def test_attempt_token_is_bound_to_run_attempt_and_secret() -> None:
    token = TOKENS.attempt_token(RUN, 2)
    assert TOKENS.check_attempt_token(RUN + "x", token) is None
    assert Tokens(SECRET + b"!").check_attempt_token(RUN, token) is None
    # relabelling the attempt number breaks the MAC
    mac = token.split(".", 1)[1]
    assert TOKENS.check_attempt_token(RUN, f"3.{mac}") is None


def test_token_kinds_do_not_cross() -> None:
    result = TOKENS.result_token(RUN)
    assert TOKENS.check_attempt_token(RUN, f"1.{result}") is None
    attempt_mac = TOKENS.attempt_token(RUN, 1).split(".", 1)[1]
    assert not TOKENS.check_result_token(RUN, attempt_mac)


def _flip_last(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


GOOD = TOKENS.attempt_token(RUN, 4)
GOOD_MAC = GOOD.split(".", 1)[1]


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "4",
        "4.",
        f".{GOOD_MAC}",
        GOOD_MAC,
        _flip_last(GOOD),
        f"04.{GOOD_MAC}",  # not canonical
        f"+4.{GOOD_MAC}",
        f"-4.{GOOD_MAC}",
        f" 4.{GOOD_MAC}",
        f"4.{GOOD_MAC} ",
        f"4.{GOOD_MAC}=",  # padded
        f"4.{GOOD_MAC}.x",
        f"٤.{GOOD_MAC}",  # a non-ASCII digit
        f"4.{GOOD_MAC[:-1]}é",
        "9" * 5000 + "." + GOOD_MAC,  # huge number: no int() blow-up
        "0." + GOOD_MAC,
        f"Bearer {GOOD}",
        "4.\udcff" * 3,  # lone surrogates
    ],
)
def test_check_attempt_token_rejects_malformed_without_raising(token: str) -> None:
    assert TOKENS.check_attempt_token(RUN, token) is None


def test_check_attempt_token_tolerates_odd_run_ids() -> None:
    assert TOKENS.check_attempt_token("\udcff", GOOD) is None
    token = TOKENS.attempt_token("run/with spaces/é", 1)
    assert TOKENS.check_attempt_token("run/with spaces/é", token) == 1


@pytest.mark.parametrize(
    ("run_id", "token", "ok"),
    [
        (RUN, TOKENS.result_token(RUN), True),
        (RUN + "x", TOKENS.result_token(RUN), False),
        (RUN, None, False),
        (RUN, "", False),
        (RUN, _flip_last(TOKENS.result_token(RUN)), False),
        (RUN, TOKENS.result_token(RUN) + "=", False),
        (RUN, "é" * 22, False),
    ],
)
def test_check_result_token(run_id: str, token: str | None, ok: bool) -> None:
    assert TOKENS.check_result_token(run_id, token) is ok


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        Tokens(b"")


def test_from_text_uses_utf8_bytes() -> None:
    assert Tokens.from_text("s3cret").result_token(RUN) == Tokens(b"s3cret").result_token(RUN)


def test_attempt_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        TOKENS.attempt_token(RUN, 0)


def test_new_run_id_is_128_bit_urlsafe_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = {new_run_id() for _ in range(1000)}
    after = time.time_ns() // 1_000_000
    assert len(ids) == 1000
    tails = set()
    for run_id in ids:
        assert len(run_id) == 22 and URLSAFE.fullmatch(run_id)
        raw = base64.urlsafe_b64decode(run_id + "==")
        assert len(raw) == 16
        # The creation time in milliseconds, then 80 random bits.
        assert before <= int.from_bytes(raw[:6], "big") <= after
        tails.add(raw[6:])
    assert len(tails) == 1000


def test_a_run_id_made_for_a_past_moment_carries_that_moment() -> None:
    raw = base64.urlsafe_b64decode(new_run_id(at=1_700_000_000.1234) + "==")
    assert int.from_bytes(raw[:6], "big") == 1_700_000_000_123


def test_random_bytes_come_in_the_sizes_asked_and_never_repeat() -> None:
    # 3,000 draws of 10 bytes run through several 4 KiB refills of the pool.
    draws = [random_bytes(10) for _ in range(3000)] + [random_bytes(5000)]
    assert [len(d) for d in draws] == [10] * 3000 + [5000]
    assert len(set(draws)) == len(draws)


def test_new_secret_is_32_bytes_base64url() -> None:
    secret = new_secret()
    assert URLSAFE.fullmatch(secret) and "=" not in secret
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 32
    assert new_secret() != secret


# ── rotation: sign with the current secret, verify with it and the previous ones ──

OLD = b"old-secret"
ROTATED = Tokens(b"new-secret", [OLD, b"older-secret"])


def test_tokens_are_made_under_the_current_secret_only() -> None:
    assert ROTATED.attempt_token(RUN, 2) == Tokens(b"new-secret").attempt_token(RUN, 2)
    assert ROTATED.result_token(RUN) == Tokens(b"new-secret").result_token(RUN)


@pytest.mark.parametrize("secret", [OLD, b"older-secret", b"new-secret"])
def test_tokens_of_any_accepted_secret_check(secret: bytes) -> None:
    issued = Tokens(secret)
    assert ROTATED.check_attempt_token(RUN, issued.attempt_token(RUN, 7)) == 7
    assert ROTATED.check_result_token(RUN, issued.result_token(RUN))


def test_tokens_of_a_secret_no_longer_listed_fail() -> None:
    dropped = Tokens(b"dropped-secret")
    assert ROTATED.check_attempt_token(RUN, dropped.attempt_token(RUN, 1)) is None
    assert not ROTATED.check_result_token(RUN, dropped.result_token(RUN))
    # and the old secret's tokens fail once it leaves the list
    assert Tokens(b"new-secret").check_result_token(RUN, Tokens(OLD).result_token(RUN)) is False


def test_a_previous_secret_keeps_tokens_bound_to_their_run() -> None:
    old = Tokens(OLD)
    assert ROTATED.check_attempt_token(RUN + "x", old.attempt_token(RUN, 1)) is None
    assert not ROTATED.check_result_token(RUN + "x", old.result_token(RUN))


def test_from_text_takes_previous_secrets() -> None:
    rotated = Tokens.from_text("new", ["old"])
    assert rotated.check_result_token(RUN, Tokens(b"old").result_token(RUN))
    assert rotated.result_token(RUN) == Tokens(b"new").result_token(RUN)


def test_an_empty_previous_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        Tokens(b"new", [b""])
