"""Route match: (method, path) → the RouteConfig that serves it. Pure.

Never matches `/_durable/…`: that namespace belongs to result URLs on the ingress.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final, final

from gateway.config import RouteConfig

RESERVED_PREFIX: Final = "/_durable"
"""Result URLs live under this path; no route, not even `/*`, can shadow them."""

STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
"""What `allowed_methods` reports for a route that accepts any method."""


def is_reserved(path: str) -> bool:
    """True for `/_durable` and anything under it."""
    return path == RESERVED_PREFIX or path.startswith(RESERVED_PREFIX + "/")


def _accepts(route: RouteConfig, method: str) -> bool:
    methods = route.match.methods
    if methods is None or method in methods:
        return True
    # A GET route answers HEAD too, as aiohttp's add_get and every origin server do.
    return method == "HEAD" and "GET" in methods


@final
class RouteTable:
    """Routes indexed for lookup; built once from config.

    Precedence: an exact path beats any prefix; among prefixes the longest wins; among
    equal paths, config order. Candidates are tried in that order and the first that
    accepts the method wins, so `POST /api/chat` (exact) and `/api/*` (any method) can
    share a path. Paths are compared as given: no trailing-slash folding, no decoding,
    no query string. Methods are case-sensitive, as RFC 9110 §9.1 says.
    """

    __slots__ = ("_exact", "_prefix")

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        exact: dict[str, list[RouteConfig]] = {}
        prefix: dict[str, list[RouteConfig]] = {}
        for route in routes:
            path = route.match.path
            if route.match.is_prefix:
                # "/api/*" is keyed by "/api"; "/*" by "" (matches every path).
                prefix.setdefault(path[:-2], []).append(route)
            else:
                exact.setdefault(path, []).append(route)
        self._exact = {path: tuple(found) for path, found in exact.items()}
        self._prefix = {base: tuple(found) for base, found in prefix.items()}

    def match(self, method: str, path: str) -> RouteConfig | None:
        """The route for this request, or None (no route, or none for this method)."""
        for route in self._candidates(path):
            if _accepts(route, method):
                return route
        return None

    def allowed_methods(self, path: str) -> frozenset[str] | None:
        """Methods some route accepts on this path, for a 405's `Allow`; None = no route."""
        allowed: set[str] = set()
        found = False
        for route in self._candidates(path):
            found = True
            methods = route.match.methods
            if methods is None:
                return STANDARD_METHODS
            allowed |= methods
            if "GET" in methods:
                allowed.add("HEAD")
        return frozenset(allowed) if found else None

    def _candidates(self, path: str) -> Iterator[RouteConfig]:
        """Routes whose path covers `path`, best first.

        Prefix bases are looked up by walking `path` up one segment at a time, so the
        cost is the path's depth, not the number of routes, and longest comes first.
        """
        if is_reserved(path):
            return
        yield from self._exact.get(path, ())
        end = len(path)
        while end >= 0:
            # Base `path[:end]` covers `path` when equal to it or followed by "/".
            yield from self._prefix.get(path[:end], ())
            end = path.rfind("/", 0, end)
