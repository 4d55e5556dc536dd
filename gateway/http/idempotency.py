"""Idempotency-Key (IETF draft): parse the key and fingerprint the request it came with.

Pure. The ingress uses these to attach a repeated request to the run of the first one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import orjson

from gateway.engine.limits import limit_key
from gateway.errors import BadRequest

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY = 255

ANONYMOUS = "anonymous"
"""The scope of callers that send none of what `idempotency_scope` names."""
_SCOPE_END = "\t"
"""Between a stored key's scope and the client's key; `parse_key` refuses tabs, so no
key stored before scopes existed (or sent since) can pass for a scoped one."""


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


def scope(
    specs: Sequence[str],
    headers: Mapping[str, str],
    query: Mapping[str, str],
    client_ip: str | None,
) -> str:
    """Who the caller is, as far as its keys go: a SHA-256 over the values `specs` name
    (`header:NAME`, `query:NAME`, `ip`, as limit keys), or ANONYMOUS when all are absent.

    Two callers share keys only when every one of those values is the same, so one
    client can never attach to (and be replayed) another's run."""
    values = [limit_key(spec, headers, query, client_ip) for spec in specs]
    if not any(values):
        return ANONYMOUS
    return hashlib.sha256(orjson.dumps(list(zip(specs, values, strict=True)))).hexdigest()


def scoped(scope: str, key: str) -> str:
    """The key as stored and looked up: the caller's scope, then the client's key."""
    return f"{scope}{_SCOPE_END}{key}"


def unscoped(stored: str) -> str:
    """The client's key of a stored one, for messages."""
    return stored.rpartition(_SCOPE_END)[2]
