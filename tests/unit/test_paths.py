"""Request paths: dot segments removed (RFC 3986 §5.2.4), encoded ones refused."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.http.paths import clean, remove_dot_segments


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # RFC 3986 §5.4's examples, as paths (base /b/c/d;p)
        ("/b/c/g", "/b/c/g"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/./", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/b/c/../../g", "/g"),
        ("/b/c/../../../g", "/g"),
        ("/b/c/../../../../g", "/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/b/c/g.", "/b/c/g."),
        ("/b/c/.g", "/b/c/.g"),
        ("/b/c/g..", "/b/c/g.."),
        ("/b/c/..g", "/b/c/..g"),
        ("/b/g/../h", "/b/h"),
        ("/b/c/./g/.", "/b/c/g/"),
        ("/b/c/g/./h", "/b/c/g/h"),
        ("/b/c/g/../h", "/b/c/h"),
        # §5.2.4's own examples
        ("/a/b/c/./../../g", "/a/g"),
        # empty segments stay, and `..` takes one of them like any other
        ("/a//b", "/a//b"),
        ("/a//../b", "/a/b"),
        ("/", "/"),
        ("/.", "/"),
        ("/..", "/"),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    ("raw", "forwarded", "matched"),
    [
        ("/plain/x", "/plain/x", "/plain/x"),
        ("/plain/../admin/secret", "/admin/secret", "/admin/secret"),
        ("/plain/./x/..", "/plain/", "/plain/"),
        ("/a/%C3%A9", "/a/%C3%A9", "/a/é"),
        ("/a/x%2Fy", "/a/x%2Fy", "/a/x%2Fy"),  # an encoded slash never splits a segment
        ("/a/b%2e/c", "/a/b%2e/c", "/a/b./c"),  # a dot inside a name is no dot segment
        ("/a/..%2e%2ex", "/a/..%2e%2ex", "/a/....x"),
        ("/a/x%2F..y", "/a/x%2F..y", "/a/x%2F..y"),
        ("*", "*", "*"),
    ],
)
def test_clean(raw: str, forwarded: str, matched: str) -> None:
    assert clean(raw) == (forwarded, matched)


@pytest.mark.parametrize(
    "raw",
    [
        "/plain/%2e%2e/admin",
        "/plain/%2E%2E/admin",
        "/plain/.%2e/admin",
        "/plain/%2e./admin",
        "/plain/%2e/admin",
        "/plain/%2e%2e",
        "/plain/x%2F..%2Fadmin",
        "/plain/x%2f%2e%2e%2fadmin",
        "/plain/..%5Cadmin",
        "/plain/x\\..\\admin",
        "/plain/.\\x",
    ],
)
def test_clean_refuses_what_a_backend_could_read_as_a_dot_segment(raw: str) -> None:
    with pytest.raises(BadRequest):
        clean(raw)
