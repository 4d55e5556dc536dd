"""The group-commit writer against a real store: batching, acknowledgement, retry, shutdown."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.errors import StoreRejected, StoreUnavailable
from gateway.store import (
    AttemptRow,
    BodyRow,
    CreateRun,
    FinishRun,
    KeyRow,
    PutStep,
    RecordAttempt,
    RunRow,
    Store,
    StoredRequest,
    StoredResponse,
    UpdateRun,
    Write,
)
from gateway.store.sqlite import SqliteStore
from gateway.store.writer import Writer

if TYPE_CHECKING:
    from tests.store.conftest import Database


def put(run_id: str, step_id: str) -> PutStep:
    return PutStep(run_id, step_id, f'"{run_id}/{step_id}"'.encode(), 1, 1.0)


class FlakyProbe:
    """Passes calls to a real store, and signals once `apply` has failed `after` times."""

    def __init__(self, store: Store, after: int) -> None:
        self.store = store
        self.failures = 0
        self.calls = 0
        self.failed_enough = asyncio.Event()
        self._after = after

    async def apply(self, writes: Sequence[Write]) -> None:
        self.calls += 1
        try:
            await self.store.apply(writes)
        except StoreUnavailable:
            self.failures += 1
            if self.failures >= self._after:
                self.failed_enough.set()
            raise

    async def get_run(self, run_id: str) -> RunRow | None:
        return await self.store.get_run(run_id)

    async def create_keyed(self, write: CreateRun) -> KeyRow | None:
        return await self.store.create_keyed(write)

    async def load_steps(self, run_id: str) -> dict[str, bytes]:
        return await self.store.load_steps(run_id)

    async def get_body(self, run_id: str) -> BodyRow | None:
        return await self.store.get_body(run_id)

    async def read_body(self, run_id: str, offset: int, limit: int) -> bytes:
        return await self.store.read_body(run_id, offset, limit)

    async def list_attempts(self, run_id: str) -> list[AttemptRow]:
        return await self.store.list_attempts(run_id)

    async def get_meta(self, key: str) -> str | None:
        return await self.store.get_meta(key)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        return await self.store.set_meta_if_absent(key, value)

    @property
    def exclusive(self) -> bool:
        return self.store.exclusive

    async def claim_unfinished(
        self, owner: str, now: float, lease_ttl: float, limit: int = 1000, *, steal: bool = False
    ) -> list[RunRow]:
        return await self.store.claim_unfinished(owner, now, lease_ttl, limit, steal=steal)

    async def renew_leases(self, owner: str, until: float) -> int:
        return await self.store.renew_leases(owner, until)

    async def release_leases(self, owner: str) -> int:
        return await self.store.release_leases(owner)

    async def find_idempotency(self, route: str, key: str) -> KeyRow | None:
        return await self.store.find_idempotency(route, key)

    async def purge_before(self, cutoff: float, limit: int = 1000) -> int:
        return await self.store.purge_before(cutoff, limit)

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture
async def writer(store: Store) -> AsyncIterator[Writer]:
    w = Writer(store)
    w.start()
    try:
        yield w
    finally:
        await w.close(timeout=10)


async def test_concurrent_writes_share_transactions(writer: Writer, database: Database) -> None:
    tasks, per_task = 100, 50
    sizes: list[int] = []
    writer.on_commit = lambda size, seconds: sizes.append(size)

    async def client(n: int) -> None:
        for i in range(per_task):
            await writer.submit(put(f"run-{n}", f"step-{i}"))

    await asyncio.gather(*(client(n) for n in range(tasks)))

    total = tasks * per_task
    assert writer.committed_writes == total
    assert writer.committed_batches < total / 10
    assert sum(sizes) == total and len(sizes) == writer.committed_batches
    assert writer.depth == 0
    assert await database.count("steps") == total


async def test_a_future_resolves_only_once_its_row_is_committed(
    writer: Writer, database: Database
) -> None:
    seen_at_ack: dict[tuple[str, str], bytes | None] = {}
    reads: list[asyncio.Future[None]] = []

    async def read(write: PutStep) -> None:
        seen_at_ack[write.run_id, write.step_id] = await database.step_output(
            write.run_id, write.step_id
        )

    def check(write: PutStep, future: asyncio.Future[None]) -> None:
        # Starts the moment the future resolves: a separate connection must see the row.
        reads.append(asyncio.ensure_future(read(write)))

    async def client(n: int) -> None:
        for i in range(10):
            write = put(f"run-{n}", f"step-{i}")
            future = writer.submit(write)
            future.add_done_callback(functools.partial(check, write))
            await future

    await asyncio.gather(*(client(n) for n in range(20)))
    await asyncio.gather(*reads)

    assert len(seen_at_ack) == 200
    assert all(output == f'"{r}/{s}"'.encode() for (r, s), output in seen_at_ack.items())


async def test_flush_waits_for_everything_submitted(writer: Writer, database: Database) -> None:
    await writer.flush()  # nothing pending: returns at once

    futures = [writer.submit(put("r", f"s{i}")) for i in range(300)]
    assert writer.depth == 300

    await writer.flush()

    assert all(f.done() and not f.cancelled() for f in futures)
    assert writer.depth == 0
    assert await database.count("steps") == 300


async def test_posted_writes_commit_in_order_with_submitted_ones(
    writer: Writer, database: Database
) -> None:
    for i in range(300):
        if i % 2:
            writer.post(put("r", f"s{i}"))
        else:
            writer.submit(put("r", f"s{i}"))
    last = writer.submit(put("r", "last"))

    await last  # committed in order: everything posted before it has landed too

    assert writer.depth == 0
    assert await database.count("steps") == 301


async def test_batches_commit_in_submission_order(store: Store) -> None:
    """Tiny batches split each run's writes across transactions; order still holds."""
    writer = Writer(store, max_batch=3)
    writer.start()
    request = StoredRequest("GET", "/", [], b"")
    for n in range(20):
        run = f"run-{n}"
        writer.submit(CreateRun(run, "r", request, 1.0))
        writer.submit(UpdateRun(run, "sleeping", 1, 50.0, 2.0))
        writer.submit(RecordAttempt(run, 1, 2.0, 3.0, "suspended"))
        writer.submit(UpdateRun(run, "running", 2, None, 4.0))
        writer.submit(FinishRun(run, "succeeded", StoredResponse(200, [], run.encode()), 5.0))
    await writer.close(timeout=10)

    assert writer.committed_batches >= 100 // 3
    for n in range(20):
        row = await store.get_run(f"run-{n}")
        assert row is not None and row.response is not None
        assert (row.status, row.attempt, row.wake_at) == ("succeeded", 2, None)
        assert row.response.body == f"run-{n}".encode()


async def test_failing_store_is_retried_until_every_write_lands(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.store.writer")
    store = await database.open(lock_wait=0.02)
    probe = FlakyProbe(store, after=3)
    writer = Writer(probe, max_batch=40)
    writer.start()
    assert writer.healthy and writer.failing_since is None and writer.last_error is None
    try:
        async with database.hold_write_lock():
            futures = [writer.submit(put("r", f"s{i}")) for i in range(100)]
            await probe.failed_enough.wait()
            # Never acknowledged while nothing could commit.
            assert not any(f.done() for f in futures)
            assert writer.depth == 100
            assert writer.committed_writes == 0
            assert not writer.healthy and writer.failing_since is not None
            assert writer.last_error is not None and "locked" in writer.last_error
        await asyncio.gather(*futures)
        assert writer.healthy and writer.failing_since is None
    finally:
        await writer.close(timeout=10)
        await store.close()

    assert await database.count("steps") == 100
    assert writer.committed_writes == 100
    assert probe.failures >= 3 and writer.failed_tries == probe.failures
    # One report for the whole burst of failures, with its cause, and one when it is over.
    started = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(started) == 1 and "locked" in started[0].getMessage()
    assert started[0].exc_info is None  # a store fault is explained, not a traceback
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    assert f"{probe.failures} retries" in recovered[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_full_database_makes_the_writer_unhealthy_until_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.store.writer")
    store = await SqliteStore.open("sqlite:///" + str(tmp_path / "full.db"), max_page_count=1)
    probe = FlakyProbe(store, after=2)
    writer = Writer(probe)
    writer.start()
    big = b'"' + b"x" * 50_000 + b'"'
    try:
        futures = [writer.submit(PutStep("r", f"s{i}", big, 1, 1.0)) for i in range(20)]
        await probe.failed_enough.wait()
        assert not writer.healthy
        assert writer.last_error is not None and "is full" in writer.last_error
        assert not any(f.done() for f in futures)

        await store.set_max_page_count(1_000_000)  # space is back
        await asyncio.gather(*futures)

        assert writer.healthy
        assert await store.load_steps("r") == {f"s{i}": big for i in range(20)}
    finally:
        await writer.close(timeout=10)
        await store.close()
    ours = [r for r in caplog.records if r.name == "gateway.store.writer"]
    assert len([r for r in ours if r.levelno == logging.WARNING]) == 1
    assert len([r for r in ours if "recovered" in r.getMessage()]) == 1


async def test_a_bug_in_apply_is_logged_with_its_traceback(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FlakyProbe):
        async def apply(self, writes: Sequence[Write]) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("bug")
            await self.store.apply(writes)

    writer = Writer(Broken(store, after=1))
    writer.start()
    try:
        await writer.submit(put("r", "s"))
    finally:
        await writer.close(timeout=10)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.exc_info is not None and "bug" in warning.getMessage()
    assert writer.last_error == "bug" and writer.healthy


async def test_saturated_at_the_queue_bound_yet_still_accepting(
    store: Store, database: Database
) -> None:
    writer = Writer(store, max_queue=5)
    futures = [writer.submit(put("r", f"s{i}")) for i in range(4)]
    assert not writer.saturated
    futures.append(writer.submit(put("r", "s4")))
    assert writer.saturated
    # Runs already admitted must still record progress: submit never refuses for depth.
    futures += [writer.submit(put("r", f"s{i}")) for i in range(5, 8)]
    assert writer.depth == 8 and writer.saturated

    writer.start()
    try:
        await asyncio.gather(*futures)
        assert not writer.saturated
    finally:
        await writer.close(timeout=10)
    assert await database.count("steps") == 8


async def test_close_flushes_then_refuses_new_writes(store: Store, database: Database) -> None:
    writer = Writer(store)
    writer.start()
    futures = [writer.submit(put("r", f"s{i}")) for i in range(500)]

    await writer.close(timeout=10)

    assert all(f.done() and not f.cancelled() for f in futures)
    assert await database.count("steps") == 500
    with pytest.raises(StoreUnavailable):
        writer.submit(put("r", "late"))
    await writer.close(timeout=10)  # idempotent


async def test_close_gives_up_after_its_timeout_and_cancels_the_rest(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    store = await database.open(lock_wait=0.02)
    writer = Writer(store)
    writer.start()
    try:
        async with database.hold_write_lock():
            futures = [writer.submit(put("r", f"s{i}")) for i in range(10)]
            writer.post(put("r", "posted"))  # no future to cancel: dropped with the rest
            await writer.close(timeout=0.2)
            assert all(f.cancelled() for f in futures)
            assert writer.depth == 0
    finally:
        await store.close()

    del futures
    gc.collect()
    assert await database.count("steps") == 0
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_flush_fails_rather_than_hang_when_the_writer_is_not_running(store: Store) -> None:
    writer = Writer(store)
    future = writer.submit(put("r", "s"))

    with pytest.raises(StoreUnavailable):
        await writer.flush()

    await writer.close(timeout=1)
    assert future.cancelled()


LIMIT = 1 << 20
"""SQLITE_LIMIT_LENGTH of the stores below: a 2 MiB value is refused for good."""
TOO_BIG = b'"' + b"x" * (2 << 20) + b'"'


async def short_store(tmp_path: Path, **kwargs: int) -> SqliteStore:
    return await SqliteStore.open(
        "sqlite:///" + str(tmp_path / "short.db"), max_length=LIMIT, **kwargs
    )


async def test_a_refused_write_is_dropped_alone_and_the_rest_commit_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await short_store(tmp_path)
    probe = FlakyProbe(store, after=1)
    writer = Writer(probe)
    refused: list[tuple[Write, str]] = []
    writer.on_rejected = lambda write, message: refused.append((write, message))
    request = StoredRequest("GET", "/", [], b"")
    offender = PutStep("r1", "big", TOO_BIG, 1, 1.0)
    batch: list[Write] = [
        CreateRun("r1", "route", request, 1.0),
        put("r1", "before"),
        UpdateRun("r1", "backoff", 2, 9.0, 2.0),
        offender,
        UpdateRun("r1", "running", 3, None, 3.0),
        put("r1", "after"),
        CreateRun("r2", "route", request, 1.0),
        FinishRun("r2", "succeeded", StoredResponse(200, [], b"ok"), 4.0),
    ]
    settled: list[int] = []
    futures = [writer.submit(write) for write in batch]
    for index, future in enumerate(futures):
        future.add_done_callback(functools.partial(lambda i, _: settled.append(i), index))
    writer.post(PutStep("r1", "posted-big", TOO_BIG, 1, 1.0))
    writer.submit(PutStep("r1", "ignored-big", TOO_BIG, 1, 1.0))  # nobody waits on it
    writer.start()  # all of it queued first: one batch
    try:
        await writer.flush()
        assert settled == list(range(len(batch)))  # in submission order, the refused one too
        for write, future in zip(batch, futures, strict=True):
            if write is offender:
                assert isinstance(future.exception(), StoreRejected)
            else:
                assert future.result() is None
        assert [write for write, _ in refused][0] is offender
        assert [getattr(write, "step_id", None) for write, _ in refused][1:] == [
            "posted-big",
            "ignored-big",
        ]
        assert all("too big" in message for _, message in refused)
        # Each write of the batch was tried once more alone; no retry loop.
        assert probe.calls == 1 + len(batch) + 2
        assert writer.failed_tries == 0 and writer.healthy
        assert writer.rejected_writes == 3 and writer.depth == 0

        row = await store.get_run("r1")
        assert row is not None and (row.status, row.attempt) == ("running", 3)
        assert set(await store.load_steps("r1")) == {"before", "after"}
        finished = await store.get_run("r2")
        assert finished is not None and finished.status == "succeeded"

        batches = writer.committed_batches
        await writer.submit(put("r1", "later"))  # the queue goes on, in batches again
        assert writer.committed_batches == batches + 1
        assert set(await store.load_steps("r1")) == {"before", "after", "later"}
    finally:
        await writer.close(timeout=10)
        await store.close()
    del futures
    gc.collect()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3
    assert all("refused a PutStep write" in r.getMessage() for r in errors)
    assert all(getattr(r, "run_id", None) == "r1" for r in errors)
    assert all("too big" in r.getMessage() and r.exc_info is None for r in errors)
    assert not [r for r in caplog.records if "store writes failing" in r.getMessage()]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_fault_while_isolating_a_refused_write_is_retried_until_it_lands(
    tmp_path: Path,
) -> None:
    # Full from the start, and a value over the length limit: the batch is refused (the
    # value cannot even be bound), then the writes alone hit the full disk.
    store = await short_store(tmp_path, max_page_count=1)
    probe = FlakyProbe(store, after=2)
    writer = Writer(probe)
    refused: list[Write] = []
    writer.on_rejected = lambda write, message: refused.append(write)
    fits = b'"' + b"y" * 50_000 + b'"'
    offender = PutStep("r", "big", TOO_BIG, 1, 1.0)
    futures = [writer.submit(offender)]
    futures += [writer.submit(PutStep("r", f"s{i}", fits, 1, 1.0)) for i in range(3)]
    writer.start()
    try:
        await probe.failed_enough.wait()
        assert refused == [offender] and futures[0].done()
        assert not writer.healthy
        assert writer.last_error is not None and "is full" in writer.last_error
        assert not any(f.done() for f in futures[1:])

        await store.set_max_page_count(1_000_000)  # space is back
        await asyncio.gather(*futures[1:])

        assert writer.healthy and refused == [offender]
        assert await store.load_steps("r") == {f"s{i}": fits for i in range(3)}
    finally:
        await writer.close(timeout=10)
        await store.close()


async def test_a_batch_of_one_refused_write_is_not_tried_again(tmp_path: Path) -> None:
    store = await short_store(tmp_path)
    probe = FlakyProbe(store, after=1)
    writer = Writer(probe)
    writer.start()
    try:
        with pytest.raises(StoreRejected, match="too big"):
            await writer.submit(PutStep("r", "big", TOO_BIG, 1, 1.0))
        await writer.submit(put("r", "next"))
    finally:
        await writer.close(timeout=10)
        await store.close()
    assert probe.calls == 2 and writer.rejected_writes == 1
