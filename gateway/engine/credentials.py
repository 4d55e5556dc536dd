"""Client credentials a run keeps to replay its request: sealed (AES-GCM) before the
request goes into a store write, opened only when a run is rebuilt from its row.

Pure but for the nonces. Never logs, shows or raises with a credential's value; the
edge shows a run's headers only through `redact`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.engine.tokens import random_bytes
from gateway.store import Headers, StoredRequest

ALWAYS_SENSITIVE: Final = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Sealed and redacted whatever `security.sensitive_headers` adds."""

REDACTED: Final = "[redacted]"
"""What the runs API and the dashboard show instead of a sensitive header's value."""

PREFIX: Final = "dg-sealed:v1:"
"""Starts every sealed value: `dg-sealed:v1:{key id}:{base64url(nonce + ciphertext)}`.

A client's own value that starts with it is sealed too, whatever its header, so every
stored value with the prefix is a sealed one and opening never guesses."""

_INFO: Final = b"durable-gateway stored credentials v1"
"""HKDF label: the sealing key is never the token-signing key (the secret itself)."""
_AAD: Final = b"durable-gateway credential\0"
"""Then `{run id}\0{lower-case header name}`: the associated data binds a sealed value to
its run and header, so moved to another run or header it no longer opens."""
_NONCE_BYTES: Final = 12
_KEY_ID_BYTES: Final = 6


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bytes(text: str) -> bytes:
    # surrogatepass: aiohttp hands non-UTF-8 header bytes over as lone surrogates, and
    # they must come back as they were.
    return text.encode("utf-8", "surrogatepass")


@final
class Credentials:
    """Seals, opens and redacts the sensitive headers of stored requests.

    Seals under the first secret; opens under any of them (the key id in a sealed
    value picks the key), so an operator can rotate `security.secret` and keep the old
    one in `security.previous_secrets` until the runs it sealed are gone.
    """

    __slots__ = ("sensitive", "_current", "_keys")

    def __init__(self, secrets: Sequence[bytes], sensitive: Iterable[str] = ()) -> None:
        if not secrets or not all(secrets):
            raise ValueError("credentials need at least one non-empty secret")
        self.sensitive: frozenset[str] = ALWAYS_SENSITIVE | {n.lower() for n in sensitive}
        """Lower-case names of the headers sealed and redacted."""
        self._keys: dict[str, list[AESGCM]] = {}
        for secret in secrets:
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
            key_id = _b64(hashlib.sha256(b"key id\0" + key).digest()[:_KEY_ID_BYTES])
            self._keys.setdefault(key_id, []).append(AESGCM(key))
        first = next(iter(self._keys))
        self._current = (first, self._keys[first][0])

    @classmethod
    def from_text(
        cls, secret: str, previous: Sequence[str] = (), sensitive: Iterable[str] = ()
    ) -> Credentials:
        """Credentials under secrets as configured (`security.secret` first): UTF-8 bytes."""
        return cls([s.encode("utf-8") for s in (secret, *previous)], sensitive)

    def seal(self, run_id: str, request: StoredRequest) -> StoredRequest:
        """The request as it is stored: sensitive values sealed (a fresh nonce each).
        The same object when there is nothing to seal, as on most requests."""
        headers = request.headers
        sensitive = self.sensitive
        for name, value in headers:  # the one pass most requests pay: `_hidden`, inlined
            if name.lower() in sensitive or value.startswith(PREFIX):
                break
        else:
            return request
        key_id, key = self._current
        head = PREFIX + key_id + ":"
        aad = _AAD + _bytes(run_id) + b"\0"
        sealed: Headers = []
        for name, value in headers:
            if self._hidden(name, value):
                nonce = random_bytes(_NONCE_BYTES)
                box = key.encrypt(nonce, _bytes(value), aad + _bytes(name.lower()))
                value = head + _b64(nonce + box)
            sealed.append((name, value))
        return StoredRequest(request.method, request.path_qs, sealed, request.body)

    def open(self, run_id: str, request: StoredRequest) -> tuple[StoredRequest, list[str]]:
        """The request to replay, and the names of headers left out because their sealed
        value does not open (sealed under a secret no longer configured, or altered).
        Values stored in the clear (rows written before sealing) pass unchanged."""
        headers = request.headers
        if not any(value.startswith(PREFIX) for _, value in headers):
            return request, []
        aad = _AAD + _bytes(run_id) + b"\0"
        opened: Headers = []
        unreadable: list[str] = []
        for name, value in headers:
            if value.startswith(PREFIX):
                plain = self._open_one(value, aad + _bytes(name.lower()))
                if plain is None:
                    unreadable.append(name)
                    continue
                value = plain
            opened.append((name, value))
        return StoredRequest(request.method, request.path_qs, opened, request.body), unreadable

    def _open_one(self, value: str, aad: bytes) -> str | None:
        key_id, _, payload = value[len(PREFIX) :].partition(":")
        try:
            raw = _unb64(payload)
        except (binascii.Error, ValueError):
            return None
        nonce, box = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        if len(nonce) < _NONCE_BYTES:
            return None
        for key in self._keys.get(key_id, ()):
            try:
                plain = key.decrypt(nonce, box, aad)
            except InvalidTag:
                continue
            return plain.decode("utf-8", "surrogatepass")
        return None

    def redact(self, headers: Headers) -> Headers:
        """Headers as an operator may see them: sensitive and sealed values replaced."""
        return [(name, REDACTED if self._hidden(name, value) else value) for name, value in headers]

    def _hidden(self, name: str, value: str) -> bool:
        """Sealed when stored and redacted when shown: a sensitive header, or a value that
        looks sealed (one of ours, or a client's posing as one)."""
        return name.lower() in self.sensitive or value.startswith(PREFIX)
