"""A run's response as its clients see it: one status, head and body, across attempts.

The runner pours each attempt's final response in; the body is stored in chunks as it
streams (through the writer, never whole in memory) and any number of clients follow it
at their own pace (`Reader`): the held client, and late joiners on the result URL, who
read what is behind them from the store. A retry after a body broke off is compared
byte for byte with what was streamed: the matching prefix is swallowed and the stream
goes on where it broke. A retry that diverges starts a new epoch, which readers see as
a reset. Nothing here waits for a client; the attempt waits for the store only when
its writes fall WRITE_AHEAD behind.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Final, final

from gateway.engine.changes import settle, until_changed
from gateway.store import (
    BODY_TOO_LARGE,
    AppendBody,
    BeginBody,
    BodyRow,
    Headers,
    Store,
    StoredResponse,
)
from gateway.store.writer import Writer

CHUNK: Final = 64 * 1024
"""Bytes per stored chunk. A body that ends whole before this much was stored goes
inline with the run's final response instead: a short streamed answer costs one write."""
FLUSH_AFTER: Final = 1.0
"""Seconds a short tail may wait for more bytes before it is stored anyway."""
TAIL_KEEP: Final = 1024 * 1024
"""Stored bytes still kept in memory, for readers close behind the upstream."""
WRITE_AHEAD: Final = 4 * 1024 * 1024
"""Bytes handed to the writer and not yet committed before the attempt waits for it."""
READ_SIZE: Final = 256 * 1024
"""Bytes a reader takes at a time, from memory or the store."""
FOLLOW_LIMIT: Final = 8 * 1024 * 1024
"""How far a reader may fall behind the upstream past `max_response`, where nothing is
stored for it to read later, before the attempt waits for it to catch up."""
CATCH_UP: Final = 2.0
"""Seconds a reader FOLLOW_LIMIT behind has to come within half of it before it is
detached: past `max_response` the attempt goes at its readers' pace (the body is only
theirs), but never slower than about 2 MiB/s for one that lags."""

SSE: Final = "text/event-stream"


class Ended(StrEnum):
    """How a stream ended for its readers."""

    WHOLE = "whole"
    """The body is complete: readers end it cleanly once they have read it all."""
    FAILED = "failed"
    """The run ended without this body (a problem, a refused write): SSE readers get a
    reset naming the result URL, others an aborted response."""
    CANCELLED = "cancelled"
    """Someone stopped the run (DELETE on its result URL, or an operator)."""
    STOPPED = "stopped"
    """The gateway is shutting down: readers are sent to the result URL."""


class Detached(StrEnum):
    """Why a reader stopped being fed (the `reason` label of the metric)."""

    SLOW = "slow"
    """It fell more than FOLLOW_LIMIT behind, past what is stored."""
    GONE = "gone"
    """Its connection closed or failed."""


@final
class Reader:
    """One client following a stream: where it is, and whether it was cut off."""

    __slots__ = ("pos", "epoch", "detached", "on_detach")

    def __init__(self, pos: int, epoch: int) -> None:
        self.pos = pos
        self.epoch = epoch
        self.detached: Detached | None = None
        self.on_detach: Callable[[], None] | None = None
        """The edge's hook: cuts the client's connection."""


def content_type(headers: Headers) -> str:
    """The media type of a head, lower case, without parameters ("" when none)."""
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


@final
class Stream:
    """A run's streamed response: its head, the body so far (the tail of it in memory,
    the rest in the store), and the clients following it.

    Invariant: bytes below `base` are committed in the store, unless the body passed
    `cap`: then nothing more is stored, and memory keeps what readers have not read.
    """

    __slots__ = (
        "run_id",
        "cap",
        "status",
        "headers",
        "content_type",
        "sse",
        "epoch",
        "attempt",
        "size",
        "base",
        "committed",
        "queued",
        "begun",
        "live",
        "stalled_since",
        "ended",
        "readers",
        "_store",
        "_writer",
        "_tail",
        "_matched",
        "_incoming",
        "_unstored_since",
        "_inflight",
        "_changes",
        "_moved",
    )

    def __init__(
        self,
        run_id: str,
        store: Store,
        writer: Writer,
        cap: int,
        *,
        status: int,
        headers: Headers,
        attempt: int,
        epoch: int = 0,
        stored: int | None = None,
    ) -> None:
        """A new stream; `stored` (bytes) rebuilds one the store has begun."""
        self.run_id = run_id
        self.cap = cap
        self._store = store
        self._writer = writer
        self._set_head(status, headers)
        self.epoch = epoch
        self.attempt = attempt
        """The attempt whose body this epoch is."""
        size = stored or 0
        self.size = size
        """Body bytes so far in this epoch."""
        self.base = size
        """Where the tail in memory starts."""
        self.committed = size
        self.queued = size
        """Bytes handed to the writer (committed or not)."""
        self.begun = stored is not None
        """This epoch's head is (queued to be) stored: its chunks may follow."""
        self.live = False
        """An attempt is pouring into it now."""
        self.stalled_since: float | None = time.monotonic()
        """When the last attempt stopped pouring (monotonic); None while one pours."""
        self.ended: Ended | None = None
        self.readers: list[Reader] = []
        self._tail = bytearray()
        self._incoming: tuple[int, int, Headers] = (attempt, status, headers)
        """The head of the attempt pouring in now (or last)."""
        self._matched: int | None = None
        """While a retry is compared with the body so far: how far it matched."""
        self._unstored_since: float | None = None
        self._inflight: collections.deque[tuple[int, int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._changes: list[asyncio.Future[None]] = []
        self._moved: asyncio.Future[None] | None = None

    @classmethod
    def from_store(
        cls, run_id: str, store: Store, writer: Writer, cap: int, row: BodyRow
    ) -> Stream:
        """The stream of a run the store has begun (a run resumed after a restart)."""
        return cls(
            run_id,
            store,
            writer,
            cap,
            status=row.status,
            headers=row.headers,
            attempt=row.attempt,
            epoch=row.epoch,
            stored=row.size,
        )

    @classmethod
    def finished(
        cls, run_id: str, store: Store, writer: Writer, response: StoredResponse
    ) -> Stream:
        """A finished run's streamed result, read from the store (`response.kept` bytes)."""
        assert response.kept is not None and response.kept >= 0
        stream = cls(
            run_id,
            store,
            writer,
            response.kept,
            status=response.status,
            headers=response.headers,
            attempt=0,
            stored=response.kept,
        )
        stream.ended = Ended.WHOLE
        return stream

    def _set_head(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self.content_type = content_type(headers)
        self.sse = self.content_type == SSE

    # --- readers' side -------------------------------------------------------------------

    def join(self, pos: int = 0) -> Reader:
        reader = Reader(pos, self.epoch)
        self.readers.append(reader)
        return reader

    def leave(self, reader: Reader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)

    @property
    def over_cap(self) -> bool:
        """Past `max_response`: the body is not kept, so joining late is refused (410)."""
        return self.size > self.cap

    def peek(self, pos: int) -> bytes | None:
        """Up to READ_SIZE bytes from `pos` held in memory; None when `pos` is behind
        the tail (read the store), b"" at the end of what there is so far."""
        if pos < self.base:
            return None
        start = pos - self.base
        return self._copy(start, READ_SIZE)

    async def read_stored(self, pos: int) -> bytes:
        """Up to READ_SIZE stored bytes from `pos`, which is behind the tail. The caller
        checks the epoch again afterwards: a reset may have come meanwhile."""
        want = min(READ_SIZE, self.base - pos)
        return await self._store.read_body(self.run_id, pos, want) if want > 0 else b""

    def moved(self) -> None:
        """A reader advanced: an attempt waiting for laggards looks again."""
        moved, self._moved = self._moved, None
        if moved is not None:
            settle(moved)

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the stream's next change (bytes, reset, end, detach)."""
        if len(self._changes) >= 64:
            self._changes = [change for change in self._changes if not change.done()]
        change: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changes.append(change)
        return change

    def _notify(self) -> None:
        changes, self._changes = self._changes, []
        for change in changes:
            settle(change)

    def detach(self, reader: Reader, why: Detached) -> None:
        """Stop feeding a reader; the first reason counts."""
        if reader.detached is not None:
            return
        reader.detached = why
        self.leave(reader)
        hook, reader.on_detach = reader.on_detach, None
        if hook is not None:
            hook()
        self._notify()

    # --- the run's side: how it ends -----------------------------------------------------

    def end(self, how: Ended) -> None:
        """The run is over for this stream's readers (or the gateway stops)."""
        if self.ended is None:
            self.ended = how
            self.live = False
            self._notify()

    def response(self) -> StoredResponse:
        """The run's final response once the body ended whole: inline when short and
        never stored, else a reference to the stored chunks, whose last ones are queued
        here, before the caller queues the run's final write."""
        if not self.begun and self.size <= self.cap and self.base == 0:
            return StoredResponse(self.status, self.headers, bytes(self._tail))
        if self.over_cap:
            return StoredResponse(self.status, self.headers, b"", kept=BODY_TOO_LARGE)
        self._store_up_to(self.size)
        return StoredResponse(self.status, self.headers, b"", kept=self.size)

    # --- a stream another node feeds (see `mirror.py`) ----------------------------------

    def mirror(self, row: BodyRow, *, streaming: bool) -> None:
        """Catch up with the store, where another node's attempt writes this body: a new
        epoch (its retry diverged) starts over from the prefix kept, more bytes extend it.
        Nothing is held in memory: readers read every byte from the store."""
        if row.epoch != self.epoch:
            self.epoch, self.attempt = row.epoch, row.attempt
            self._set_head(row.status, row.headers)
            self.size = -1  # forces the move below, even to a shorter prefix
        if row.size != self.size:
            self.size = self.base = self.committed = self.queued = row.size
        self.live = streaming
        if streaming:
            self.stalled_since = None
        elif self.stalled_since is None:
            self.stalled_since = time.monotonic()
        self._notify()

    # --- the attempt's side ----------------------------------------------------------------

    def open(self, attempt: int, status: int, headers: Headers) -> None:
        """An attempt's final response begins pouring in.

        It is compared with the body so far (nothing, for the attempt that began the
        stream): a different status or media type, or a body already past `cap` (whose
        end was not kept to compare with), diverges at once.
        """
        self.live, self.stalled_since = True, None
        self._incoming = (attempt, status, headers)
        other_type = headers is not self.headers and content_type(headers) != self.content_type
        if status != self.status or other_type or self.over_cap:
            self._diverge(0)
        elif self.size > 0:
            self._matched = 0
        self._notify()

    async def pour(self, chunk: bytes) -> bool:
        """Take a chunk of the open attempt's body; False once the stream has ended (the
        run finished otherwise meanwhile): stop reading."""
        if self.ended is not None:
            return False
        if self._matched is not None:
            chunk = await self._compare(chunk)
            if not chunk:
                return True
        self._tail += chunk
        self.size += len(chunk)
        if self._unstored_since is None:
            self._unstored_since = time.monotonic()
        self.attempt = self._incoming[0]
        self._notify()
        await self._flow()
        return True

    def close(self, *, whole: bool) -> None:
        """The open attempt's body ended: whole, or broken off (then what streamed is
        stored at once, for the next attempt, or the next process, to compare with)."""
        self.live = False
        if whole and self._matched is not None:
            self._diverge(self._matched)  # it ended short of what was sent
        self._matched = None
        if whole:
            self.end(Ended.WHOLE)
            return
        self.stalled_since = time.monotonic()
        if self.size and self.ended is None and not self.over_cap:
            self._store_up_to(self.size)
        self._notify()

    async def _compare(self, chunk: bytes) -> bytes:
        """Swallow what of `chunk` matches the body so far; returns what goes on past it
        (after a reset when it diverged)."""
        while chunk and self._matched is not None:
            pos = self._matched
            want = min(len(chunk), self.size - pos)
            mine = self.peek(pos)
            if mine is None:
                mine = await self.read_stored(pos)
            mine = mine[:want]
            if not mine or chunk[: len(mine)] != mine:
                self._diverge(pos + _common_prefix(chunk, mine))
                return chunk[self.size - pos :]
            chunk = chunk[len(mine) :]
            pos += len(mine)
            self._matched = pos if pos < self.size else None
        return chunk

    def _diverge(self, at: int) -> None:
        """The open attempt differs from the body so far from byte `at` on: a new epoch
        keeps the first `at` bytes (the same in both) under that attempt's head."""
        self.epoch += 1
        self.attempt, status, headers = self._incoming
        self._set_head(status, headers)
        self._matched = None
        at = min(at, self.size)
        if at >= self.base:
            del self._tail[at - self.base :]
        else:
            self._tail.clear()
            self.base = at
        self.size = at
        self.queued = min(self.queued, at)
        self.committed = min(self.committed, at)
        if self.begun:
            self._begin(keep=self.queued)
        self._notify()

    async def _flow(self) -> None:
        """Store what is due, wait while the store is far behind, drop what readers
        no longer need from memory. Past `cap` nothing more is stored: the result is
        not kept, and a retry cannot be compared with what was not kept."""
        if not self.over_cap:
            due = self.size - self.queued
            if due >= CHUNK or (
                due > 0
                and self._unstored_since is not None
                and time.monotonic() - self._unstored_since >= FLUSH_AFTER
            ):
                self._store_up_to(self.size)
        while self.queued - self.committed > WRITE_AHEAD and self._inflight:
            oldest = self._inflight[0][2]
            if not oldest.done():  # a refused write fails the run (see the runner)
                await asyncio.wait([oldest])
            self._settled(oldest)  # now: its own callback may not have run yet
        if self.over_cap:
            await self._wait_for_laggards()
        self._trim()

    async def _wait_for_laggards(self) -> None:
        """Past `cap` nothing is stored for a reader to come back to: wait for readers
        FOLLOW_LIMIT behind to come within half of it, detaching those that do not
        within CATCH_UP."""
        laggards = [r for r in self.readers if self.size - r.pos > FOLLOW_LIMIT]
        if not laggards:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        while lagging := [
            r for r in laggards if r.detached is None and self.size - r.pos > FOLLOW_LIMIT // 2
        ]:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.ended is not None:
                for reader in lagging:
                    self.detach(reader, Detached.SLOW)
                return
            self._moved = loop.create_future()
            await until_changed(self._moved, remaining)

    def _store_up_to(self, end: int) -> None:
        """Queue the body's bytes up to `end` as chunks (the head first, once per epoch)."""
        if end <= self.queued:
            return
        if not self.begun:
            self._begin(keep=self.queued)
        while self.queued < end:
            n = min(CHUNK, end - self.queued)
            start = self.queued - self.base
            data = self._copy(start, n)
            committed = self._writer.submit(AppendBody(self.run_id, self.queued, data))
            self.queued += n
            self._inflight.append((self.epoch, self.queued, committed))
            committed.add_done_callback(self._settled)
        self._unstored_since = None if self.queued >= self.size else time.monotonic()

    def _copy(self, start: int, n: int) -> bytes:
        """Up to `n` bytes of the tail from index `start`, copied once (a slice of the
        bytearray itself would be copied twice)."""
        with memoryview(self._tail) as view:
            return bytes(view[start : start + n])

    def _begin(self, keep: int) -> None:
        self.begun = True
        self._writer.post(
            BeginBody(self.run_id, self.epoch, self.attempt, self.status, self.headers, keep=keep)
        )

    def _settled(self, _: asyncio.Future[None]) -> None:
        """Chunks commit in order: move `committed` past those that did, in this epoch."""
        while self._inflight and self._inflight[0][2].done():
            epoch, end, committed = self._inflight.popleft()
            if committed.cancelled() or committed.exception() is not None:
                continue
            if epoch == self.epoch:
                self.committed = max(self.committed, end)
        self._trim()

    def _trim(self) -> None:
        """Drop from memory what is stored, keeping the last TAIL_KEEP bytes; past `cap`
        keep what attached readers have not read (the attempt waits for laggards)."""
        target = self.size - TAIL_KEEP
        if target <= self.base:
            return
        if not self.over_cap:
            target = min(target, self.committed)
        else:
            for reader in self.readers:
                target = min(target, reader.pos)
        if target > self.base:
            del self._tail[: target - self.base]
            self.base = target


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
