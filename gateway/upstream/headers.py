"""Header rewriting at the proxy hop: client → upstream and upstream → client. Pure.

Never lets a client set the gateway's own `Durable-*` request headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final, Protocol, cast

from step_protocol.wire import GATEWAY_HEADERS

Pairs = list[tuple[str, str]]

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers about one connection, never forwarded (RFC 9110 §7.6.1)."""

_GATEWAY_SET: Final = frozenset(name.lower() for name in GATEWAY_HEADERS)

_DROP_UPSTREAM: Final = _GATEWAY_SET | {
    "host",  # the client session sets the upstream's own Host
    "content-length",  # recomputed from the stored body
    # The body is buffered and stored before the first attempt, so a 100-continue
    # handshake with the upstream has nothing left to decide.
    "expect",
    "x-forwarded-proto",
    "x-forwarded-host",
    "traceparent",
}

_NOT_FORWARDED: Final = HOP_BY_HOP | _DROP_UPSTREAM

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class SupportsItems(Protocol):
    """A header container: CIMultiDictProxy, CIMultiDict, dict, …"""

    def items(self) -> Iterable[tuple[str, str]]: ...


HeaderSource = SupportsItems | Iterable[tuple[str, str]]


def _pairs(source: HeaderSource) -> Iterable[tuple[str, str]]:
    # getattr, not isinstance against the runtime-checkable Protocol: this runs twice per
    # request, and the Protocol check cost about 3% of the gateway's time under load.
    items = getattr(source, "items", None)
    if callable(items):
        pairs: Iterable[tuple[str, str]] = items()
        return pairs
    return cast(Iterable[tuple[str, str]], source)


def _named_by_connection(value: str, named: set[str] | None) -> set[str] | None:
    """Add the header names a `Connection:` value lists, less the ones always dropped."""
    tokens = {token.strip().lower() for token in value.split(",")} - HOP_BY_HOP
    if not tokens:
        return named
    return tokens if named is None else named | tokens


def strip_hop_by_hop(items: HeaderSource) -> Pairs:
    """Headers less the hop-by-hop ones, including any named in `Connection:`.

    One pass over the usual headers; a second only when `Connection:` names others.
    """
    kept: Pairs = []
    named: set[str] | None = None
    for name, value in _pairs(items):
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            kept.append((name, value))
        elif lower == "connection":
            named = _named_by_connection(value, named)
    if named:
        return [(name, value) for name, value in kept if name.lower() not in named]
    return kept


def upstream_request_headers(
    client_headers: HeaderSource,
    *,
    client_ip: str | None,
    scheme: str,
    host: str | None,
    traceparent: str | None,
) -> Pairs:
    """The headers an attempt sends upstream, before the gateway adds its `Durable-*` ones.

    `X-Forwarded-For` grows by the client's address; `X-Forwarded-Proto` and
    `X-Forwarded-Host` describe this hop and replace whatever the client sent (we trust
    no hop before us). `traceparent` is replaced by the gateway's (see
    `traceparent_for`), or left out when None; `tracestate` passes through.
    """
    out: Pairs = []
    forwarded_for: list[str] = []
    named: set[str] | None = None
    for name, value in _pairs(client_headers):
        lower = name.lower()
        if lower == "x-forwarded-for":
            forwarded_for.append(value.strip())
        elif lower not in _NOT_FORWARDED:
            out.append((name, value))
        elif lower == "connection":
            named = _named_by_connection(value, named)
    if named:
        out = [(name, value) for name, value in out if name.lower() not in named]
        if "x-forwarded-for" in named:
            forwarded_for = []
    if client_ip:
        forwarded_for.append(client_ip)
    chain = ", ".join(part for part in forwarded_for if part)
    if chain:
        out.append(("X-Forwarded-For", chain))
    out.append(("X-Forwarded-Proto", scheme))
    if host:
        out.append(("X-Forwarded-Host", host))
    if traceparent is not None:
        out.append(("traceparent", traceparent))
    return out


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """A valid W3C `traceparent`'s trace id, parent id and flags (hex); None otherwise
    (all-zero ids are invalid)."""
    found = _TRACEPARENT.fullmatch(value.strip())
    if found and int(found[1], 16) and int(found[2], 16):
        return found[1], found[2], found[3]
    return None


def traceparent_for(incoming: str | None, random_bytes: Callable[[int], bytes]) -> str:
    """The W3C `traceparent` for the upstream request.

    A valid incoming one keeps its trace id and flags and gets a fresh parent id, since
    the gateway is a hop in the trace; anything else starts a new, sampled trace.
    """
    parsed = None if incoming is None else parse_traceparent(incoming)
    if parsed is not None:
        trace_id, _, flags = parsed
        return f"00-{trace_id}-{_nonzero_hex(random_bytes, 8)}-{flags}"
    return f"00-{_nonzero_hex(random_bytes, 16)}-{_nonzero_hex(random_bytes, 8)}-01"


def _nonzero_hex(random_bytes: Callable[[int], bytes], size: int) -> str:
    """A random id of `size` bytes as lower-case hex; all-zero ids are invalid in W3C."""
    while True:
        raw = random_bytes(size)
        if any(raw):
            return raw.hex()


def client_response_headers(upstream_items: HeaderSource, *, keep_length: bool = True) -> Pairs:
    """The upstream response's headers as the client gets them.

    Keep `Content-Length` when the body is streamed through unchanged; drop it when the
    caller re-frames the body (then aiohttp sets its own length or chunking).
    """
    pairs = strip_hop_by_hop(upstream_items)
    if keep_length:
        return pairs
    return [(name, value) for name, value in pairs if name.lower() != "content-length"]
