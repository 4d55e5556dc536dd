"""The held client's feed: order, the bound, detaching, and who it wakes."""

from __future__ import annotations

import asyncio

from gateway.engine.live import FEED_LIMIT, Detached, Feed


def drain(feed: Feed) -> list[bytes]:
    taken = []
    while (chunk := feed.take()) is not None:
        taken.append(chunk)
    return taken


def test_chunks_come_out_in_the_order_they_went_in() -> None:
    feed = Feed(limit=100)
    headers = [("Content-Type", "text/plain")]
    feed.start(200, headers)
    assert (feed.status, feed.headers, feed.started) == (200, headers, True)
    for chunk in (b"a", b"bb", b"ccc"):
        assert feed.push(chunk)
    assert feed.buffered == 6
    assert drain(feed) == [b"a", b"bb", b"ccc"]
    assert feed.buffered == 0 and feed.take() is None
    feed.end(ok=True)
    assert (feed.finished, feed.ok, feed.detached) == (True, True, None)


def test_the_bound_is_on_what_the_client_has_not_taken() -> None:
    feed = Feed(limit=10)
    assert feed.push(b"x" * 6)
    assert feed.push(b"x" * 4)  # exactly at the bound: kept
    assert feed.take() == b"x" * 6
    assert feed.push(b"y" * 6)  # room again: 4 + 6
    assert feed.detached is None
    assert drain(feed) == [b"x" * 4, b"y" * 6]


def test_past_the_bound_the_client_is_detached_and_its_buffer_dropped() -> None:
    feed = Feed(limit=10)
    cuts: list[str] = []
    feed.on_detach = lambda: cuts.append("cut")
    assert feed.push(b"x" * 8)
    assert not feed.push(b"y" * 3)  # 11 > 10
    assert feed.detached is Detached.SLOW
    assert (feed.buffered, feed.take()) == (0, None)
    assert cuts == ["cut"]  # the edge's hook cuts the connection, once
    assert not feed.push(b"z")  # nothing more is taken
    feed.detach(Detached.GONE)  # the edge then sees its write fail: the first reason stays
    feed.end(ok=True)
    assert (feed.detached, feed.take(), cuts) == (Detached.SLOW, None, ["cut"])


def test_a_client_that_leaves_is_detached_the_same_way() -> None:
    feed = Feed(limit=10)
    assert feed.push(b"abc")
    feed.detach(Detached.GONE)
    assert feed.detached is Detached.GONE
    assert not feed.push(b"d")
    assert feed.take() is None


def test_the_default_bound() -> None:
    assert Feed().limit == FEED_LIMIT == 8 * 1024 * 1024


async def test_every_change_wakes_the_edge() -> None:
    feed = Feed(limit=10)
    run_changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert feed.changed(run_changed) is run_changed  # the handler's own future, shared
    feed.start(200, [])
    assert run_changed.done()
    woken = feed.changed()
    assert not woken.done()
    feed.push(b"a")
    assert woken.done()
    woken = feed.changed()
    feed.end(ok=False)
    assert woken.done() and (feed.finished, feed.ok) == (True, False)
    woken = feed.changed()
    feed.detach(Detached.GONE)
    assert woken.done()
