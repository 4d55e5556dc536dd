"""A run held in memory: the feed to its held client and the waiters' change signal.

Owned by the driver; the ingress and result handlers only read it and wait on it. Nothing
here touches a connection: the HTTP edge drains the feed into the client's.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import final

from gateway.engine.runs import Run
from gateway.store import IdempotencyKey

FEED_LIMIT = 8 * 1024 * 1024
"""Body bytes a held client may fall behind the upstream before it is detached.

Thirty-two of the largest chunks the upstream client hands over (one socket read, 256
KiB), on top of what the kernel buffers for the connection: a client that reads at
network speed rides out a burst of a fast upstream or a stall of a loaded machine (at
1 MiB, a plain client on loopback was cut once in fourteen 8 MiB streams), while one
that reads slower than the upstream sends is cut within 8 MiB, so that slow clients cost
a bounded amount of memory each and never slow their attempts down.
"""


class Detached(StrEnum):
    """Why the held client stopped being fed (the `reason` label of the metric)."""

    SLOW = "slow"
    """It fell more than the feed's limit behind the upstream."""
    GONE = "gone"
    """Its connection closed or failed."""


@final
class Feed:
    """An attempt's final response on its way to the held client: bounded, never awaited.

    The engine calls `start`, `push` and `end`, none of which waits; the HTTP edge drains
    the chunks into the client's connection at the client's pace. Once the client falls
    more than `limit` bytes behind, or leaves, it is detached: the buffer is dropped,
    `push` takes nothing more, and `on_detach` (the edge's hook) cuts the connection, so
    the attempt goes on at the upstream's pace and the client comes back for the result.
    """

    __slots__ = (
        "limit",
        "status",
        "headers",
        "started",
        "finished",
        "ok",
        "detached",
        "on_detach",
        "_chunks",
        "_buffered",
        "_waiter",
    )

    def __init__(self, limit: int = FEED_LIMIT) -> None:
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.started = False
        self.finished = False
        self.ok = False
        """Whether the upstream body ended whole (once `finished`)."""
        self.detached: Detached | None = None
        self.on_detach: Callable[[], None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None

    # --- the engine's side: never waits ------------------------------------------------

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers, self.started = status, headers, True
        self._wake()

    def push(self, chunk: bytes) -> bool:
        """Queue a body chunk; False once the client is detached: stop feeding it."""
        if self.detached is not None:
            return False
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > self.limit:
            self.detach(Detached.SLOW)
            return False
        self._wake()
        return True

    def end(self, ok: bool) -> None:
        """The body ended: whole (`ok`), or broken off (the edge cuts the connection)."""
        self.finished, self.ok = True, ok
        self._wake()

    # --- the edge's side -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes pushed and not yet taken by the edge."""
        return self._buffered

    def take(self) -> bytes | None:
        """The next chunk in order, or None when none is waiting."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        return chunk

    def changed(self, waiter: asyncio.Future[None] | None = None) -> asyncio.Future[None]:
        """A future the next start, push, end or detach resolves: `waiter` when given (the
        held client's handler waits on its run's changes and its feed's at once)."""
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        return waiter

    def detach(self, why: Detached) -> None:
        """Stop feeding the client and drop what it has not taken; the first reason counts."""
        if self.detached is not None:
            return
        self.detached = why
        self._chunks.clear()
        self._buffered = 0
        hook, self.on_detach = self.on_detach, None
        if hook is not None:
            hook()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _settle(waiter)


@dataclass(slots=True, eq=False)
class LiveRun:
    """A run this process drives, with what its waiters need."""

    run: Run
    feed: Feed | None = None
    """The held original client's feed, until an attempt streams into it or it is redirected."""
    in_attempt: bool = False
    waiters: int = 0
    """Handlers holding a client on this run (the original, attached duplicates, result URLs)."""
    task: asyncio.Task[None] | None = None
    wake_requested: bool = False
    """The scheduler took the run while its task was still committing its suspension."""
    created: asyncio.Future[None] | None = None
    """Resolves once the run's record is committed: wait for it before handing out its URL."""
    idempotency: IdempotencyKey | None = None
    """The request's Idempotency-Key, when it carried one (its route is the run's)."""
    final_commit: asyncio.Future[None] | None = None
    """Resolves once the final response is committed."""
    _changes: list[asyncio.Future[None]] = field(default_factory=list)

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the run's next change: take it before reading the state,
        or at least with no await between the reads and the wait.

        Await it through `until_changed`. Futures of waiters that left without waiting
        (they found what they wanted) are dropped here now and then, not kept forever.
        """
        if len(self._changes) >= 64:
            self._changes = [change for change in self._changes if not change.done()]
        change: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changes.append(change)
        return change

    def notify(self) -> None:
        changes, self._changes = self._changes, []
        for change in changes:
            _settle(change)

    @property
    def evictable(self) -> bool:
        """Nobody waits on it here: a suspended run can live in the store alone."""
        return self.feed is None and self.waiters == 0 and not self.in_attempt


async def until_changed(change: asyncio.Future[None], seconds: float) -> None:
    """Wait for a change, or `seconds` at most; the caller re-reads the state either way.

    A timer that settles the future rather than `asyncio.timeout`, which costs about three
    times as much, and this wait happens once per held request.
    """
    timer = asyncio.get_running_loop().call_later(seconds, _settle, change)
    try:
        await change
    finally:
        timer.cancel()


def _settle(change: asyncio.Future[None]) -> None:
    if not change.done():
        change.set_result(None)
