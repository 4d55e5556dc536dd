"""Request paths as the ingress matches and forwards them: dot segments removed. Pure.

A route's prefix is a promise about what reaches its upstream, so a path is cleaned
before it is matched, and the cleaned path is what goes upstream: `/plain/../admin`
matches and forwards as `/admin`. What a backend might decode into a dot segment that
the gateway would not see (`%2e%2e`, `..%2F`, `..\\`) is refused, never guessed at.
"""

from __future__ import annotations

import re
from typing import Final

from yarl import URL

from gateway.errors import BadRequest

_ENCODED_DOT: Final = re.compile("%2e", re.IGNORECASE)
_SEPARATORS: Final = re.compile(r"%2f|%5c|\\", re.IGNORECASE)
"""What some backends read as a path separator inside one segment: `%2F`, `%5C`, `\\`."""


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 over a path that starts with `/`: `.` and `..` segments go,
    each `..` with the segment before it (never above the root); empty segments stay."""
    out: list[str] = []
    parts = path.split("/")
    last = len(parts) - 1
    for i, part in enumerate(parts[1:], 1):
        if part == "..":
            if out:
                out.pop()
        elif part != ".":
            out.append(part)
            continue
        if i == last:  # a final dot segment leaves the directory: "/a/b/.." is "/a/"
            out.append("")
    return "/" + "/".join(out)


def _dot_segment(part: str) -> bool:
    return part in (".", "..")


def check_segment(segment: str) -> None:
    """Refuse a raw segment that is a dot segment once decoded (`%2e`, `.%2E`), or holds
    one between encoded slashes or backslashes (`..%2Fx`, `a\\..`)."""
    decoded = _ENCODED_DOT.sub(".", segment) if "%" in segment else segment
    if decoded != segment and _dot_segment(decoded):
        raise BadRequest(f"the path has an encoded dot segment ({segment!r}); send it as '..'")
    if _SEPARATORS.search(segment) and any(map(_dot_segment, _SEPARATORS.split(decoded))):
        raise BadRequest(
            f"the path segment {segment!r} holds a dot segment between encoded slashes "
            "or backslashes, which a backend could read as '..'"
        )


def clean(raw: str) -> tuple[str, str]:
    """`(forwarded, matched)` for a request's raw path (percent-encoded, no query).

    `forwarded` is `raw` with its dot segments removed, still encoded; `matched` is that
    decoded except `%2F` and `%25`, so an encoded slash never splits a segment when a
    route is chosen (as aiohttp's router decodes). Raises BadRequest (400) on an encoded
    dot segment. Most paths hold neither `/.`, `%` nor `\\` and are returned as they are.
    """
    if not raw.startswith("/"):  # `*` or garbage: no route will match it
        return raw, raw
    if "%" in raw or "\\" in raw:
        for segment in raw.split("/"):
            check_segment(segment)
    forwarded = remove_dot_segments(raw) if "/." in raw else raw
    if "%" not in forwarded:
        return forwarded, forwarded
    return forwarded, URL.build(path=forwarded, encoded=True).path_safe
