"""storage_url: the one parser of `storage.url`, shared by the config loader and the stores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.config.storage_url import (
    PostgresUrl,
    SqliteUrl,
    check_sqlite_path,
    parse_storage_url,
    shown_url,
)
from gateway.store.sqlite import path_from_url


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///durable.db", "durable.db"),
        ("sqlite:///./durable.db", "./durable.db"),
        ("sqlite:///relative/dir/gw.db", "relative/dir/gw.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("SQLite:///upper.db", "upper.db"),  # schemes are case-insensitive (RFC 3986)
        ("sqlite:///with space.db", "with space.db"),
        ("sqlite:///:memory:", ":memory:"),  # parses; the config loader refuses it
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert parse_storage_url(url) == SqliteUrl(path)
    assert path_from_url(url) == path  # the store reads the URL the same way
    assert parse_storage_url(url).in_memory is (path == ":memory:")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "is not a URL"),
        ("durable.db", "is not a URL"),
        ("/var/lib/durable.db", "is not a URL"),
        (":memory:", "is not a URL"),
        ("pw@db:5432/x", "is not a URL"),
        ("mysql://h/db", "unknown scheme 'mysql'"),
        ("file:///x.db", "unknown scheme 'file'"),
        ("postgresql://u:pw@h:port/db", "port is not a number"),
        ("postgresql://u:pw@h:99999/db", "port is not a number"),
        ("postgresql://u:pw@h/", "names no database"),
        ("postgresql://u:pw@h/a/b", "names no database"),
        ("postgresql://u:pw@/db", "names no host"),
        ("postgresql:u:pw@h/db", "starts with postgresql://"),
        ("postgresql://u:pw@h/db#x", "takes no fragment"),
        ("postgresql://u:pw@h/d\nb", "control character"),
        ("sqlite:", "three slashes"),
        ("sqlite:x.db", "three slashes"),
        ("sqlite://x.db", "three slashes"),
        ("sqlite://host/x.db", "three slashes"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?mode=ro", "no query string or fragment"),
        ("sqlite:///x.db?", "no query string or fragment"),
        ("sqlite:///x.db#frag", "no query string or fragment"),
        ("sqlite:///dir/", "names a directory"),
        ("sqlite:///.", "names a directory"),
        ("sqlite:///..", "names a directory"),
        ("sqlite:///dir/.", "names a directory"),
        ("sqlite:///x\0.db", "control character"),
        ("sqlite:///x\n.db", "control character"),
    ],
)
def test_urls_this_build_cannot_open(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_storage_url(url)
    if url.lower().startswith("sqlite") or "://" not in url:
        with pytest.raises(ValueError, match=why):
            path_from_url(url)
    if "pw" in url:
        assert "pw" not in str(info.value)  # a URL may carry a password: never echoed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://dg:s3cret@db:5432/durable", "postgresql://dg@db:5432/durable"),
        ("postgres://db/durable?sslmode=require", "postgres://db/durable"),
        ("PostgreSQL://u%40x:pw@h1:5432,h2:5433/d", "postgresql://u@x@h1:5432,h2:5433/d"),
        ("postgresql:///durable?host=/run/postgresql", "postgresql:///durable"),
    ],
)
def test_postgres_urls(url: str, shown: str) -> None:
    parsed = parse_storage_url(url)
    assert parsed == PostgresUrl(url, shown)
    assert not parsed.in_memory
    assert "s3cret" not in repr(parsed) and shown_url(url) == shown
    with pytest.raises(ValueError, match="not an sqlite"):
        path_from_url(url)


def test_check_sqlite_path(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for fine in ("new.db", "file", "dir/x.db", "a/b/c/x.db", ":memory:"):
        check_sqlite_path(fine if fine == ":memory:" else str(tmp_path / fine))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "link"]  # no trace
    for bad, why in [
        ("dir", "is a directory"),
        ("file/x.db", "file is not a directory"),
        ("file/a/b/x.db", "file is not a directory"),
        ("link/x.db", "link is dangling"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_sqlite_path(str(tmp_path / bad))


def test_a_postgresql_url_needs_the_driver_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build without the `postgres` extra: refused where `check` and `open_store`
    both look (`None` in sys.modules is how Python marks a module absent)."""
    url = "postgresql://u:pw@h:5432/db"
    assert isinstance(parse_storage_url(url), PostgresUrl)
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ValueError) as info:
        parse_storage_url(url)
    assert str(info.value) == (
        "a postgresql store needs the asyncpg package, which is not installed:"
        " pip install 'durable-gateway[postgres]'"
    )
    assert isinstance(parse_storage_url("sqlite:///gw.db"), SqliteUrl)
