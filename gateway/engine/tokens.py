"""Capabilities: HMAC tokens for the sidecar (per attempt) and for result URLs. Pure.

Never raises on a malformed token (it is simply not valid) and never compares MACs
in variable time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Sequence
from typing import Final, final

_MILLIS_MASK: Final = (1 << 48) - 1
"""A run id's time field: milliseconds since 1970, good until the year 10889."""

_MAC_BYTES: Final = 16
"""128 bits: unforgeable, and short enough for a header or a query string."""

_ATTEMPT = re.compile(r"([1-9][0-9]{0,17})\.([A-Za-z0-9_-]{22})")
"""`{attempt}.{mac}`: canonical decimal (no sign, no leading zero), 16-byte unpadded MAC."""


_POOL_BYTES: Final = 4096
_pool = b""
_taken = 0


def random_bytes(size: int) -> bytes:
    """`size` bytes from `os.urandom`, which is read 4 KiB at a time: one system call
    per run id was a third of the cost of making one. Not for secrets that outlive the
    process (those take `secrets` directly), and for the event loop's thread only: two
    threads could be handed the same bytes."""
    global _pool, _taken
    start = _taken
    end = start + size
    if end > len(_pool):
        _pool = os.urandom(max(_POOL_BYTES, size))
        start, end = 0, size
    _taken = end
    return _pool[start:end]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _utf8(text: str) -> bytes:
    # surrogatepass: an id decoded from a hostile URL must fail the check, not raise.
    return text.encode("utf-8", "surrogatepass")


def new_run_id(at: float | None = None) -> str:
    """A fresh run id: 128 bits, URL-safe (22 characters): a 48-bit creation time in
    milliseconds, then 80 random bits, the layout of a UUIDv7.

    The random part alone makes ids unique and unguessable. The time in front makes ids
    created close together share a prefix, so they fall on the same few pages of every
    index keyed by run id. Wholly random ids put each run's rows on pages of their own:
    on a store of a few hundred thousand runs that was two thirds of a batch's cost.
    `at` (Unix seconds) stands in for the clock, for ids of runs made in bulk.
    """
    nanos = time.time_ns() if at is None else int(at * 1e9)
    millis = nanos // 1_000_000 & _MILLIS_MASK
    return _b64(millis.to_bytes(6, "big") + random_bytes(10))


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, base64url without padding."""
    return secrets.token_urlsafe(32)


@final
class Tokens:
    """Makes and checks tokens under one secret, and checks them under earlier ones too.

    Each kind of token MACs a distinct label first (`attempt\\0`, `result\\0`), so a
    token of one kind is never valid as another. Tokens are made under the current
    secret only; `previous` secrets (`security.previous_secrets`) keep the tokens and
    result URLs they signed valid while an operator rotates the secret.
    """

    __slots__ = ("_keyed", "_accepted")

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        if not secret or not all(previous):
            raise ValueError("token secret must not be empty")
        # Keyed once: copying it skips the key schedule each token would otherwise redo
        # (2.2 against 3.1 µs a MAC), and every durable request makes or checks several.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        self._accepted = (self._keyed, *(hmac.new(s, digestmod=hashlib.sha256) for s in previous))
        """The current secret's MAC, then those of the previous secrets."""

    @classmethod
    def from_text(cls, secret: str, previous: Sequence[str] = ()) -> Tokens:
        """Tokens under secrets as configured (`security.secret`, then
        `security.previous_secrets`): their UTF-8 bytes."""
        return cls(secret.encode("utf-8"), [s.encode("utf-8") for s in previous])

    @staticmethod
    def _mac(keyed: hmac.HMAC, *parts: bytes) -> str:
        mac = keyed.copy()
        mac.update(b"\0".join(parts))
        return _b64(mac.digest()[:_MAC_BYTES])

    def _accepts(self, token: str, *parts: bytes) -> bool:
        """True when `token` is the MAC of `parts` under any accepted secret."""
        given = token.encode("ascii")
        found = False
        for keyed in self._accepted:  # every one, so the time says nothing of which
            found |= hmac.compare_digest(self._mac(keyed, *parts).encode("ascii"), given)
        return found

    def attempt_token(self, run_id: str, attempt: int) -> str:
        """The sidecar bearer token of attempt `attempt` (>= 1) of a run: `{attempt}.{mac}`."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        number = str(attempt)
        return f"{number}.{self._mac(self._keyed, b'attempt', _utf8(run_id), number.encode())}"

    def check_attempt_token(self, run_id: str, token: str) -> int | None:
        """The attempt a token was issued to, if it is valid for this run; else None.

        Whether that attempt is still the current one is the driver's question (a stale
        attempt gets 409), not this one's.
        """
        found = _ATTEMPT.fullmatch(token) if token.isascii() else None
        if found is None:
            return None
        number, mac = found[1], found[2]
        if self._accepts(mac, b"attempt", _utf8(run_id), number.encode()):
            return int(number)
        return None

    def result_token(self, run_id: str) -> str:
        """The token in a run's result URL: whoever holds the URL may read the result."""
        return self._mac(self._keyed, b"result", _utf8(run_id))

    def check_result_token(self, run_id: str, token: str | None) -> bool:
        """True when `token` is this run's result token (under any accepted secret)."""
        if token is None or not token.isascii():
            return False
        return self._accepts(token, b"result", _utf8(run_id))
