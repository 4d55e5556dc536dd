"""Streamed response bodies in the store: a head per run, chunks at byte offsets, reads
from any offset, divergence, and what cancel, reset, purge and the batch fold do to them.

Contract tests (the `store` fixture): every database in conftest.DATABASES must pass them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.store import (
    BODY_TOO_LARGE,
    AppendBody,
    BeginBody,
    BodyRow,
    CancelRun,
    FinishRun,
    FullStore,
    RecordAttempt,
    ResetRun,
    Store,
    StoredResponse,
    Write,
)
from gateway.store.batch import CreatedFinished, coalesce, group_writes
from gateway.store.sqlite.sql import MAX_ROWS, plan
from tests.store.records import create

if TYPE_CHECKING:
    from tests.store.conftest import Database

HEADERS = [("Content-Type", "text/event-stream"), ("X-Tag", "a"), ("X-Tag", "caf\udce9")]
# Uneven chunks carrying every byte value: reads must cut them at any offset.
CHUNKS = [bytes(range(0, 7)), bytes(range(7, 8)), bytes(range(8, 20)), bytes(range(20, 256))]
BODY = b"".join(CHUNKS)


def appends(run_id: str, chunks: list[bytes], start: int = 0) -> list[AppendBody]:
    """The chunks as consecutive AppendBody writes from byte `start`."""
    out: list[AppendBody] = []
    for data in chunks:
        out.append(AppendBody(run_id, start, data))
        start += len(data)
    return out


def begin(run_id: str, epoch: int = 1, keep: int = 0, status: int = 200) -> BeginBody:
    return BeginBody(run_id, epoch, epoch, status, HEADERS, keep)


def streamed(kept: int) -> StoredResponse:
    return StoredResponse(200, HEADERS, b"", kept)


async def read_all(store: Store, run_id: str, limit: int) -> bytes:
    """The stored body read as a result URL streams it: a loop of bounded reads."""
    parts: list[bytes] = []
    offset = 0
    while piece := await store.read_body(run_id, offset, limit):
        assert len(piece) <= limit
        parts.append(piece)
        offset += len(piece)
    return b"".join(parts)


async def test_a_streamed_body_round_trips_with_its_head_and_kept_length(store: Store) -> None:
    await store.apply([create("r1"), begin("r1")])
    await store.apply(appends("r1", CHUNKS[:2]))
    head = await store.get_body("r1")
    assert head == BodyRow(1, 1, 200, HEADERS, 8)
    run = await store.get_run("r1")
    assert run is not None and run.response is None  # streaming: no result yet

    await store.apply(
        [
            *appends("r1", CHUNKS[2:], start=8),
            FinishRun("r1", "succeeded", streamed(len(BODY)), 5.0),
        ]
    )

    assert await store.get_body("r1") == BodyRow(1, 1, 200, HEADERS, len(BODY))
    assert await store.read_body("r1", 0, 10_000) == BODY
    run = await store.get_run("r1")
    assert run is not None and run.status == "succeeded"
    assert run.response == StoredResponse(200, HEADERS, b"", len(BODY))


async def test_read_body_from_any_offset_with_any_limit(store: Store) -> None:
    await store.apply([create("r1"), begin("r1"), *appends("r1", CHUNKS)])
    ends = {0, 7, 8, 20, len(BODY)}  # chunk boundaries, checked on purpose below

    for offset in [*range(0, 30), 100, 255, 256, 257, 10_000]:
        for limit in (1, 2, 5, 13, 256, 1000):
            assert await store.read_body("r1", offset, limit) == BODY[offset : offset + limit], (
                offset,
                limit,
            )
    for end in ends:
        assert await store.read_body("r1", end, 1) == BODY[end : end + 1]
    assert await store.read_body("r1", 3, 0) == b""
    for limit in (1, 3, 8, 300):
        assert await read_all(store, "r1", limit) == BODY


async def test_bodies_of_other_runs_and_unknown_runs_stay_apart(store: Store) -> None:
    await store.apply(
        [
            create("a"),
            create("b"),
            begin("a"),
            begin("b"),
            *appends("a", [b"aaa"]),
            *appends("b", [b"bbbb"]),
        ]
    )

    assert await store.read_body("a", 0, 100) == b"aaa"
    assert await store.read_body("b", 0, 100) == b"bbbb"
    assert await store.get_body("nope") is None
    assert await store.read_body("nope", 0, 100) == b""


async def test_begin_body_again_keeps_only_a_prefix_and_cuts_the_chunk_across_it(
    store: Store,
) -> None:
    await store.apply([create("r1"), begin("r1"), *appends("r1", [b"hello", b"world", b"!!!"])])

    # Inside a chunk: the retry diverged after "hellowo".
    await store.apply([begin("r1", epoch=2, keep=7, status=201)])
    assert await store.get_body("r1") == BodyRow(2, 2, 201, HEADERS, 7)
    assert await store.read_body("r1", 0, 100) == b"hellowo"
    await store.apply(appends("r1", [b"ndy", b"."], start=7))
    assert await store.read_body("r1", 0, 100) == b"hellowondy."
    assert await store.read_body("r1", 6, 3) == b"ond"

    # On a chunk boundary, and past the end (nothing to cut).
    await store.apply([begin("r1", epoch=3, keep=5)])
    assert await store.read_body("r1", 0, 100) == b"hello"
    await store.apply([begin("r1", epoch=4, keep=50)])
    assert await store.get_body("r1") == BodyRow(4, 4, 200, HEADERS, 5)

    # From nothing: a new body from its start.
    await store.apply([begin("r1", epoch=5, keep=0), *appends("r1", [b"again"])])
    assert await store.get_body("r1") == BodyRow(5, 5, 200, HEADERS, 5)
    assert await store.read_body("r1", 0, 100) == b"again"


async def test_a_chunk_already_stored_at_its_offset_stays(store: Store) -> None:
    await store.apply([create("r1"), begin("r1"), AppendBody("r1", 0, b"first")])
    await store.apply([AppendBody("r1", 0, b"other")])

    assert await store.read_body("r1", 0, 100) == b"first"


async def test_a_body_too_large_to_keep_reads_back_as_such(store: Store) -> None:
    await store.apply([create("r1"), begin("r1"), *appends("r1", [b"head"])])
    await store.apply(
        [
            BeginBody("r1", 2, 1, 200, HEADERS, 0),
            FinishRun("r1", "succeeded", streamed(BODY_TOO_LARGE), 5.0),
        ]
    )

    run = await store.get_run("r1")
    assert run is not None and run.response == streamed(BODY_TOO_LARGE)
    assert await store.get_body("r1") == BodyRow(2, 1, 200, HEADERS, 0)


async def test_cancel_and_reset_clear_the_body_but_a_finished_result_stands(
    store: Store, database: Database
) -> None:
    problem = StoredResponse(409, [("Content-Type", "application/problem+json")], b"{}")
    for run_id in ("cancelled", "reset", "done"):
        await store.apply([create(run_id), begin(run_id), *appends(run_id, CHUNKS)])
    await store.apply([FinishRun("done", "succeeded", streamed(len(BODY)), 5.0)])

    await store.apply([CancelRun("cancelled", problem, 6.0), CancelRun("done", problem, 6.0)])

    assert await store.get_body("cancelled") is None
    assert await store.read_body("cancelled", 0, 100) == b""
    cancelled = await store.get_run("cancelled")
    assert cancelled is not None and cancelled.response == problem
    # CancelRun changes nothing on a finished run, its streamed body included.
    done = await store.get_run("done")
    assert done is not None and done.status == "succeeded"
    assert done.response == streamed(len(BODY))
    assert await store.read_body("done", 0, 1000) == BODY

    await store.apply([FinishRun("reset", "failed", streamed(len(BODY)), 7.0)])
    await store.apply([ResetRun("reset", 2, 8.0)])
    reset = await store.get_run("reset")
    assert reset is not None and (reset.status, reset.response) == ("running", None)
    assert await store.get_body("reset") is None
    # Only the finished run's chunks are left.
    assert await database.count("body_chunks") == len(CHUNKS)
    assert await database.count("bodies") == 1


async def test_purge_removes_a_runs_body_with_it(store: FullStore, database: Database) -> None:
    await store.apply([create("old"), begin("old"), *appends("old", CHUNKS)])
    await store.apply([FinishRun("old", "succeeded", streamed(len(BODY)), 50.0)])
    await store.apply([create("live"), begin("live"), *appends("live", [b"still streaming"])])

    assert await store.purge_before(100.0) == len(CHUNKS)  # the largest count: chunks

    assert await store.get_run("old") is None
    assert await store.get_body("old") is None
    assert await database.count("body_chunks") == 1
    assert await database.count("bodies") == 1
    assert await store.read_body("live", 0, 100) == b"still streaming"


async def test_purge_deletes_a_bounded_number_of_chunks_per_call(
    store: FullStore, database: Database
) -> None:
    """A purge loop (while it returns `limit`) takes big bodies a few chunks at a time:
    the run goes once its chunks are gone, runs without chunks go at once."""
    many = [bytes([i]) * 3 for i in range(5)]
    await store.apply([create("big"), begin("big"), *appends("big", many), create("plain")])
    await store.apply(
        [
            FinishRun("big", "succeeded", streamed(15), 50.0),
            FinishRun("plain", "succeeded", StoredResponse(200, [], b"inline"), 60.0),
        ]
    )

    counts = [await store.purge_before(100.0, limit=2) for _ in range(4)]

    # 2 chunks (and "plain"), 2 chunks, the last chunk and then "big", nothing.
    assert counts == [2, 2, 1, 0]
    assert await store.get_run("big") is None and await store.get_run("plain") is None
    assert await database.count("body_chunks") == 0 and await database.count("bodies") == 0


def stream_batch(run_id: str) -> list[Write]:
    """A whole streamed run in one commit window, with a divergent retry mid-way."""
    return [
        create(run_id),
        begin(run_id),
        *appends(run_id, [b"abc", b"def"]),
        RecordAttempt(run_id, 1, 1.0, 2.0, "connect_error", None, "broke"),
        begin(run_id, epoch=2, keep=4),
        *appends(run_id, [b"XY", b"Z"], start=4),
        RecordAttempt(run_id, 2, 3.0, 4.0, "response", 200),
        FinishRun(run_id, "succeeded", streamed(7), 4.0),
    ]


def test_a_streamed_run_folds_and_keeps_its_body_writes_in_order() -> None:
    folded = coalesce(stream_batch("a"))

    assert isinstance(folded[0], CreatedFinished)
    assert [type(w).__name__ for w in folded[1:]] == [
        "BeginBody",
        "AppendBody",
        "AppendBody",
        "RecordAttempt",
        "BeginBody",
        "AppendBody",
        "AppendBody",
        "RecordAttempt",
    ]
    # Across groups, each run's body writes keep their order.
    order = [w for group in group_writes(folded) for w in group if w.run_id == "a"]
    body = [w for w in order if isinstance(w, BeginBody | AppendBody)]
    assert body == [w for w in folded if isinstance(w, BeginBody | AppendBody)]


async def test_a_streamed_run_in_one_batch_lands_as_if_written_one_by_one(store: Store) -> None:
    await store.apply(stream_batch("folded"))
    for write in stream_batch("one-by-one"):
        await store.apply([write])

    for run_id in ("folded", "one-by-one"):
        assert await store.read_body(run_id, 0, 100) == b"abcdXYZ"
        assert await store.get_body(run_id) == BodyRow(2, 2, 200, HEADERS, 7)
        run = await store.get_run(run_id)
        assert run is not None and run.status == "succeeded"
        assert run.response == streamed(7)
        assert [a.attempt for a in await store.list_attempts(run_id)] == [1, 2]


def test_a_batchs_chunks_are_one_insert_per_max_rows() -> None:
    writes: list[Write] = []
    for run_id in ("a", "b", "c"):
        writes += [create(run_id), begin(run_id)]
    for i in range(MAX_ROWS):  # three streams interleaved, as the writer gets them
        writes += [AppendBody(run_id, i, b"x") for run_id in ("a", "b", "c")]

    inserts = [rows for sql, rows in plan(writes) if sql.startswith("INSERT INTO body_chunks")]

    assert [len(flat) // 3 for [flat] in inserts] == [MAX_ROWS, MAX_ROWS, MAX_ROWS]


async def test_a_body_of_many_chunks_streams_back_in_bounded_reads(store: Store) -> None:
    chunk = bytes(range(256)) * 4
    chunks = [bytes([i % 251]) + chunk for i in range(2 * MAX_ROWS + 7)]
    body = b"".join(chunks)
    await store.apply([create("big"), begin("big"), *appends("big", chunks)])

    head = await store.get_body("big")
    assert head is not None and head.size == len(body)
    assert await read_all(store, "big", 64 * 1024) == body
    assert await read_all(store, "big", 1000) == body  # each read inside one chunk or two


def test_writes_that_could_never_read_back_are_refused_when_made() -> None:
    with pytest.raises(ValueError):
        AppendBody("r", 0, b"")  # would take offset 0 from the real chunk
    with pytest.raises(ValueError):
        AppendBody("r", -1, b"x")
    with pytest.raises(ValueError):
        BeginBody("r", 1, 1, 200, [], keep=-1)
    with pytest.raises(ValueError):
        StoredResponse(200, [], b"inline", kept=6)
    with pytest.raises(ValueError):
        StoredResponse(200, [], b"", kept=-2)


async def test_read_body_refuses_a_negative_offset(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.read_body("r", -1, 10)
