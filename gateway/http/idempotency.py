"""Idempotency-Key (IETF draft): parse the key and fingerprint the request it came with.

Pure. The ingress uses these to attach a repeated request to the run of the first one.
"""

from __future__ import annotations

import hashlib

from gateway.errors import BadRequest

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY = 255


def parse_key(value: str) -> str:
    """The key, from a bare token or the draft's structured-field string (`"…"`)."""
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not key:
        raise BadRequest(f"{HEADER} is empty")
    if len(key) > MAX_KEY:
        raise BadRequest(f"{HEADER} is longer than {MAX_KEY} characters")
    if not key.isprintable():
        raise BadRequest(f"{HEADER} has non-printable characters")
    return key


def fingerprint(method: str, path_qs: str, body: bytes) -> str:
    """What makes two requests 'the same': method, path, query and a hash of the body."""
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b"\0")
    digest.update(path_qs.encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()
