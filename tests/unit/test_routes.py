"""RouteTable: exact vs prefix precedence, methods, 405 support, the reserved namespace."""

from __future__ import annotations

import pytest

from gateway.config import RouteConfig, RouteMatch
from gateway.http.routes import STANDARD_METHODS, RouteTable, is_reserved


def route(name: str, path: str, *methods: str) -> RouteConfig:
    return RouteConfig(
        name=name,
        match=RouteMatch(path=path, methods=frozenset(methods) if methods else None),
        upstream="http://127.0.0.1:1",
    )


TABLE = RouteTable(
    [
        route("chat", "/api/chat", "POST"),
        route("chat-get", "/api/chat", "GET"),
        route("api", "/api/*"),
        route("api-v2", "/api/v2/*", "GET", "PUT"),
        route("api-v2-dup", "/api/v2/*"),  # same prefix, later in config: a fallback
        route("root", "/"),
        route("health", "/health", "GET"),
        route("catch-all", "/*", "GET"),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # exact paths match exactly, and beat any prefix
        ("POST", "/api/chat", "chat"),
        ("GET", "/api/chat", "chat-get"),
        ("HEAD", "/api/chat", "chat-get"),  # GET implies HEAD
        # an exact path with the wrong method falls through to a covering prefix
        ("DELETE", "/api/chat", "api"),
        ("POST", "/api/chat/", "api"),  # no trailing-slash folding
        # prefix: the base itself, base + "/", and anything under it
        ("GET", "/api", "api"),
        ("GET", "/api/", "api"),
        ("DELETE", "/api/x/y/z", "api"),
        # a prefix needs a segment boundary
        ("GET", "/apix", "catch-all"),
        ("POST", "/apix", None),
        # the longest prefix wins; among equal prefixes, config order
        ("GET", "/api/v2/users", "api-v2"),
        ("PUT", "/api/v2", "api-v2"),
        ("POST", "/api/v2/users", "api-v2-dup"),
        ("GET", "/api/v20", "api"),
        # the root is an exact path, "/*" a prefix covering everything
        ("GET", "/", "root"),
        ("POST", "/", "root"),
        ("GET", "/health", "health"),
        ("POST", "/health", None),
        ("GET", "/anything/else", "catch-all"),
        # methods are case-sensitive (RFC 9110 §9.1)
        ("get", "/health", None),
        # the reserved namespace never matches, not even "/*"
        ("GET", "/_durable/runs/abc/result", None),
        ("GET", "/_durable", None),
        ("GET", "/_durablex", "catch-all"),
    ],
)
def test_match(method: str, path: str, expected: str | None) -> None:
    found = TABLE.match(method, path)
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/health", frozenset({"GET", "HEAD"})),
        ("/nowhere/at/all", frozenset({"GET", "HEAD"})),  # only the GET catch-all covers it
        ("/api/chat", STANDARD_METHODS),  # "/api/*" takes any method
        ("/_durable/runs/x", None),
    ],
)
def test_allowed_methods(path: str, expected: frozenset[str] | None) -> None:
    assert TABLE.allowed_methods(path) == expected


def test_allowed_methods_unions_every_covering_route() -> None:
    table = RouteTable(
        [route("a", "/x", "POST"), route("b", "/x/*", "DELETE"), route("c", "/*", "PATCH")]
    )
    assert table.match("GET", "/x") is None
    assert table.allowed_methods("/x") == frozenset({"POST", "DELETE", "PATCH"})


def test_no_route_at_all_is_none() -> None:
    table = RouteTable([route("a", "/a", "GET"), route("b", "/b/*")])
    assert table.match("GET", "/c") is None
    assert table.allowed_methods("/c") is None
    assert table.allowed_methods("/bb") is None


def test_empty_table() -> None:
    table = RouteTable([])
    assert table.match("GET", "/") is None
    assert table.allowed_methods("/") is None


def test_equal_exact_paths_keep_config_order() -> None:
    table = RouteTable([route("first", "/p"), route("second", "/p")])
    found = table.match("GET", "/p")
    assert found is not None and found.name == "first"


def test_deep_path_finds_shallow_prefix() -> None:
    table = RouteTable([route("deep", "/a/*")])
    path = "/a" + "/seg" * 500
    found = table.match("GET", path)
    assert found is not None and found.name == "deep"


@pytest.mark.parametrize(
    ("path", "reserved"),
    [("/_durable", True), ("/_durable/", True), ("/_durable/runs", True), ("/_durables", False)],
)
def test_is_reserved(path: str, reserved: bool) -> None:
    assert is_reserved(path) is reserved
