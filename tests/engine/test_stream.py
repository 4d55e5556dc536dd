"""A run's stream over a real SQLite store and writer: what it keeps, how a retry is
compared with what was streamed, and how memory stays bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.engine.stream import CHUNK, TAIL_KEEP, Ended, Stream
from gateway.store import BODY_TOO_LARGE, Headers
from gateway.store.sqlite import SqliteStore
from gateway.store.writer import Writer

SSE: Headers = [("Content-Type", "text/event-stream")]
TEXT: Headers = [("Content-Type", "text/plain; charset=utf-8")]
RUN = "run-1"


@dataclass
class Parts:
    store: SqliteStore
    writer: Writer

    def stream(self, cap: int = 64 * 1024 * 1024, headers: Headers = SSE) -> Stream:
        return Stream(RUN, self.store, self.writer, cap, status=200, headers=headers, attempt=1)

    async def stored(self) -> bytes:
        await self.writer.flush()
        row = await self.store.get_body(RUN)
        assert row is not None
        return await self.store.read_body(RUN, 0, row.size + 1)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'stream.db'}")
    writer = Writer(store)
    writer.start()
    try:
        yield Parts(store, writer)
    finally:
        await writer.close(timeout=5)
        await store.close()


async def pour(stream: Stream, body: bytes, piece: int, attempt: int = 1) -> None:
    stream.open(attempt, 200, stream.headers)
    for start in range(0, len(body), piece):
        assert await stream.pour(body[start : start + piece])


def body(n: int, version: int = 1) -> bytes:
    return b"".join(f"data: token {i} v{version}\n\n".encode() for i in range(n))


async def test_a_short_body_that_ends_whole_is_kept_inline_and_never_stored(
    parts: Parts,
) -> None:
    stream = parts.stream()
    await pour(stream, body(10), 7)
    stream.close(whole=True)
    assert stream.ended is Ended.WHOLE
    response = stream.response()
    assert response.kept is None and response.body == body(10)
    await parts.writer.flush()
    assert await parts.store.get_body(RUN) is None


async def test_a_long_body_is_stored_in_chunks_and_memory_keeps_only_its_tail(
    parts: Parts,
) -> None:
    whole = body(200_000)  # about 4 MiB
    stream = parts.stream()
    await pour(stream, whole, 100_003)
    stream.close(whole=True)
    response = stream.response()
    assert response.kept == len(whole) and response.body == b""
    assert await parts.stored() == whole
    assert stream.size - stream.base <= TAIL_KEEP + 100_003
    assert stream.peek(0) is None  # behind the tail: read from the store
    assert await stream.read_stored(0) == whole[: len(await stream.read_stored(0))]


async def test_a_retry_that_repeats_what_was_streamed_goes_on_without_a_seam(
    parts: Parts,
) -> None:
    whole = body(50_000)
    stream = parts.stream()
    reader = stream.join()
    await pour(stream, whole[:300_001], 65_536)
    stream.close(whole=False)  # broke off: what streamed is stored at once
    assert stream.ended is None and stream.stalled_since is not None
    await pour(stream, whole, 9_999, attempt=2)  # compared, swallowed, then new bytes
    stream.close(whole=True)
    assert stream.epoch == reader.epoch == 0 and stream.size == len(whole)
    assert stream.attempt == 2
    assert stream.response().kept == len(whole)
    assert await parts.stored() == whole


async def test_a_retry_that_differs_starts_a_new_epoch_at_the_first_other_byte(
    parts: Parts,
) -> None:
    first, second = body(40), body(40, version=2)
    at = first.index(b" v1")
    assert first[:at] == second[:at]
    stream = parts.stream()
    await pour(stream, first[:500], 100)
    stream.close(whole=False)
    await pour(stream, second, 33, attempt=2)
    assert stream.epoch == 1 and stream.attempt == 2
    stream.close(whole=True)
    assert stream.response().kept == len(second)  # stored: the first attempt's bytes were
    assert await parts.stored() == second


async def test_a_retry_that_ends_short_of_what_was_sent_diverges_where_it_ends(
    parts: Parts,
) -> None:
    whole = body(40)
    stream = parts.stream()
    await pour(stream, whole[:300], 100)
    stream.close(whole=False)
    await pour(stream, whole[:200], 100, attempt=2)
    stream.close(whole=True)
    assert stream.epoch == 1 and stream.size == 200
    assert stream.response().kept == 200
    assert await parts.stored() == whole[:200]


async def test_a_retry_with_another_status_or_type_diverges_at_once(parts: Parts) -> None:
    stream = parts.stream()
    await pour(stream, body(5), 10)
    stream.close(whole=False)
    stream.open(2, 200, TEXT)
    assert stream.epoch == 1 and stream.size == 0 and not stream.sse
    stream.open(3, 503, TEXT)
    assert stream.epoch == 2 and stream.status == 503


async def test_a_stream_rebuilt_from_the_store_compares_a_retry_with_what_is_stored(
    parts: Parts,
) -> None:
    whole = body(20_000)
    first = parts.stream()
    await pour(first, whole[: CHUNK * 3 + 5], 4096)
    first.close(whole=False)
    await parts.writer.flush()
    row = await parts.store.get_body(RUN)
    assert row is not None and row.size == CHUNK * 3 + 5
    again = Stream.from_store(RUN, parts.store, parts.writer, 64 * 1024 * 1024, row)
    assert again.peek(0) is None and again.size == row.size
    await pour(again, whole, 50_000, attempt=2)
    again.close(whole=True)
    assert again.epoch == 0
    assert again.response().kept == len(whole)
    assert await parts.stored() == whole


async def test_past_max_response_nothing_more_is_stored_and_the_result_is_not_kept(
    parts: Parts,
) -> None:
    whole = body(100_000)
    stream = parts.stream(cap=CHUNK * 2)
    await pour(stream, whole, 10_000)
    stream.close(whole=True)
    assert stream.over_cap
    assert stream.response().kept == BODY_TOO_LARGE
    assert len(await parts.stored()) <= CHUNK * 2
    assert stream.size - stream.base <= TAIL_KEEP + 10_000  # no reader: nothing kept for one


async def test_a_stream_broken_past_max_response_cannot_be_resumed(parts: Parts) -> None:
    stream = parts.stream(cap=100)
    await pour(stream, body(40), 50)
    stream.close(whole=False)
    await pour(stream, body(40), 50, attempt=2)  # the same bytes, but not kept to compare
    assert stream.epoch == 1
