"""Write-behind group commit: one task drains queued writes into store transactions.

Never acknowledges a write before the transaction holding it has committed. A batch that
fails on a fault (locked, full, I/O) is retried, in order, until it commits or the gateway
stops; a batch holding a write the store refuses for good (StoreRejected) is re-applied
one write at a time, so only that write is dropped, reported, and the queue goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import final

from gateway import tasks
from gateway.errors import StoreRejected, StoreUnavailable
from gateway.store import Store, Write

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


@final
class Writer:
    """Queues writes without blocking; commits them in batches that form on their own.

    There is no batching delay: while one transaction commits, new writes pile up,
    and the next transaction takes them all (up to `max_batch`). Batches commit in
    submission order, so a write never lands before one submitted earlier.
    """

    __slots__ = (
        "committed_batches",
        "committed_writes",
        "failed_tries",
        "rejected_writes",
        "on_commit",
        "on_rejected",
        "failing_since",
        "last_error",
        "_store",
        "_max_batch",
        "_max_queue",
        "_queue",
        "_inflight",
        "_wakeup",
        "_flushers",
        "_submitted",
        "_committed",
        "_task",
        "_closed",
        "_stopping",
    )

    def __init__(self, store: Store, *, max_batch: int = 2000, max_queue: int = 100_000) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.committed_batches = 0
        self.committed_writes = 0
        self.failed_tries = 0
        """Failed `apply` calls since start, over every burst."""
        self.rejected_writes = 0
        """Writes the store refused for good and the writer dropped, since start."""
        self.on_commit: Callable[[int, float], None] | None = None
        """Called after each commit with (batch size, seconds in apply); for metrics."""
        self.on_rejected: Callable[[Write, str], None] | None = None
        """Called with (write, the store's message) for each write refused for good,
        before its future fails: the owner of its run decides what the run becomes."""
        self.failing_since: float | None = None
        """Wall-clock time of the first failure of the current burst; None when healthy."""
        self.last_error: str | None = None
        """The latest failure's message; kept after recovery, for the record."""
        self._store = store
        self._max_batch = max_batch
        self._max_queue = max_queue
        # Each write with the future its submitter waits on; None for a posted write.
        self._queue: deque[tuple[Write, asyncio.Future[None] | None]] = deque()
        self._inflight: list[tuple[Write, asyncio.Future[None] | None]] = []
        self._wakeup = asyncio.Event()
        # flush() waiters: (sequence number to reach, future); targets never decrease.
        self._flushers: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._submitted = 0
        self._committed = 0  # writes settled, in order: committed, or rejected for good
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stopping = False

    @property
    def depth(self) -> int:
        """Writes submitted and not yet committed (queued plus the batch in flight)."""
        return len(self._queue) + len(self._inflight)

    @property
    def healthy(self) -> bool:
        """False from a failed commit until the next one succeeds: durable routes answer 503."""
        return self.failing_since is None

    @property
    def saturated(self) -> bool:
        """The queue is at its bound: admit no new runs (writes of admitted ones still queue)."""
        return self.depth >= self._max_queue

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("writer already started")
        self._task = tasks.spawn(self._run(), name="store-writer")

    def submit(self, write: Write) -> asyncio.Future[None]:
        """Queue a write; the future resolves once its batch has committed.

        Never awaits. Ignoring the future is fine: it gets a result, or StoreRejected
        when the store refuses the write for good (reported through `on_rejected` and
        the log, and marked retrieved), or is cancelled at shutdown, so it cannot log
        "exception was never retrieved".
        Raises StoreUnavailable once `close()` has begun, rather than queue a write
        that nothing would commit; never for a full queue (see `saturated`), since a
        run already admitted must be able to record its progress.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(write, future)
        return future

    def post(self, write: Write) -> None:
        """`submit` for a write nobody waits on: no future to make and settle per write
        (a run's attempt record, for one), which `flush()` still covers."""
        self._enqueue(write, None)

    def _enqueue(self, write: Write, future: asyncio.Future[None] | None) -> None:
        if self._closed:
            raise StoreUnavailable("store writer is closed")
        self._queue.append((write, future))
        self._submitted += 1
        self._wakeup.set()

    async def flush(self) -> None:
        """Wait until every write submitted before this call has committed (or was
        rejected for good)."""
        target = self._submitted
        if self._committed >= target:
            return
        if self._task is None or self._task.done():
            raise StoreUnavailable("store writer is not running")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushers.append((target, waiter))
        await waiter

    # A parameter rather than the caller's asyncio.timeout: cancelling close() itself
    # would leave the loop running; on timeout we still stop it and settle the futures.
    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Refuse new writes, flush for up to `timeout` seconds, then stop the loop.

        Writes still uncommitted after the timeout have their futures cancelled; they
        were never acknowledged, so the next start re-does their work from the store.
        """
        self._closed = True
        task = self._task
        if task is None:
            self._abandon()
            return
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except TimeoutError:
            log.error("store writer stopping with %d writes not committed", self.depth)
        except StoreUnavailable:
            pass  # the loop already ended; its finally abandoned what was left
        self._stopping = True
        self._wakeup.set()
        if self.depth:
            task.cancel()
        await asyncio.wait({task})

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                count = min(len(self._queue), self._max_batch)
                self._inflight = [self._queue.popleft() for _ in range(count)]
                try:
                    seconds = await self._commit([write for write, _ in self._inflight])
                except StoreRejected as exc:
                    await self._one_by_one(exc)
                    continue
                batch, self._inflight = self._inflight, []
                self._settle(batch, seconds)
        finally:
            self._abandon()

    def _settle(
        self, batch: list[tuple[Write, asyncio.Future[None] | None]], seconds: float
    ) -> None:
        """A batch committed: resolve its futures and the flushers it satisfies."""
        count = len(batch)
        self._committed += count
        self.committed_batches += 1
        self.committed_writes += count
        for _, future in batch:
            if future is not None and not future.done():  # a caller may have cancelled
                future.set_result(None)
        self._release_flushers()
        if self.on_commit is not None:
            try:
                self.on_commit(count, seconds)
            except Exception:
                log.exception("store writer on_commit hook failed")

    async def _one_by_one(self, refusal: StoreRejected) -> None:
        """The batch in flight holds a write the store refuses for good: apply its writes
        one at a time, each alone in its own transaction, in submission order, so every
        other write commits (in order still) and only the offenders are rejected.

        One transaction a write is slow, but it only ever follows a refusal; a fault
        on the way is retried as for any batch.
        """
        if len(self._inflight) == 1:
            write, future = self._inflight.pop()
            self._reject(write, future, refusal)
            return
        while self._inflight:
            entry = self._inflight[0]
            try:
                seconds = await self._commit([entry[0]])
            except StoreRejected as exc:
                del self._inflight[0]
                self._reject(*entry, exc)
                continue
            del self._inflight[0]
            self._settle([entry], seconds)

    def _reject(
        self, write: Write, future: asyncio.Future[None] | None, exc: StoreRejected
    ) -> None:
        """Drop a write the store refuses for good: log it, tell the hook, fail its future."""
        message = str(exc) or type(exc).__name__
        self._committed += 1
        self.rejected_writes += 1
        log.error(
            "store refused a %s write for good; dropped it: %s",
            type(write).__name__,
            message,
            extra={"run_id": write.run_id},
        )
        if self.on_rejected is not None:
            try:
                self.on_rejected(write, message)
            except Exception:
                log.exception("store writer on_rejected hook failed")
        if future is not None and not future.done():
            future.set_exception(exc)
            future.exception()  # reported above: a submitter that never awaits it is fine
        self._release_flushers()

    async def _commit(self, writes: list[Write]) -> float:
        """Apply one batch, retrying with backoff until it commits; return its duration.

        Raises StoreRejected at once: retrying a write refused for good cannot help.
        Logs once per burst of failures, not once per try, and once more on recovery.
        """
        delay = BACKOFF_FIRST
        failures = 0
        burst_started = 0.0
        while True:
            started = time.perf_counter()
            try:
                await self._store.apply(writes)
            except StoreRejected:
                self._recovered(failures, burst_started)  # the store answers again
                raise
            except Exception as exc:
                self.last_error = str(exc) or type(exc).__name__
                self.failed_tries += 1
                if not failures:
                    burst_started = started
                    self.failing_since = time.time()
                    # A store fault explains itself; anything else is a bug: show where.
                    log.warning(
                        "store writes failing, retrying until they commit: %s",
                        self.last_error,
                        exc_info=None if isinstance(exc, StoreUnavailable) else exc,
                    )
                failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._recovered(failures, burst_started)
            return time.perf_counter() - started

    def _recovered(self, failures: int, burst_started: float) -> None:
        """End a burst of failures, if there was one: healthy again, said once."""
        if failures:
            self.failing_since = None
            log.info(
                "store writes recovered after %.1f s, %d retries",
                time.perf_counter() - burst_started,
                failures,
            )

    def _release_flushers(self) -> None:
        while self._flushers and self._flushers[0][0] <= self._committed:
            _, waiter = self._flushers.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _abandon(self) -> None:
        """Loop gone: cancel what never committed and fail the flushers waiting on it."""
        self._closed = True
        for _, future in (*self._inflight, *self._queue):
            if future is not None:
                future.cancel()
        self._inflight = []
        self._queue.clear()
        while self._flushers:
            _, waiter = self._flushers.popleft()
            if not waiter.done():
                waiter.set_exception(StoreUnavailable("store writer stopped before committing"))
