"""A run held in memory: the held client's connection and the waiters' change signal.

Owned by the driver; the ingress and result handlers only read it and wait on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from gateway.engine.runs import Run
from gateway.store import IdempotencyKey


class ClientSink:
    """The held client's connection: the attempt that turns out final streams into it."""

    __slots__ = ("request", "response", "alive", "done")

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.alive = True
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        resp = web.StreamResponse(status=status)
        for name, value in headers:
            resp.headers.add(name, value)
        self.response = resp
        try:
            await resp.prepare(self.request)
        except (ConnectionError, RuntimeError):
            self.alive = False

    async def write(self, chunk: bytes) -> None:
        if self.alive and self.response is not None:
            try:
                await self.response.write(chunk)
            except (ConnectionError, RuntimeError):
                self.alive = False  # the client left; the run goes on without it

    async def end(self, ok: bool) -> None:
        """Finish the client's response; on a broken upstream body, cut the connection."""
        if self.alive and self.response is not None:
            try:
                if ok:
                    await self.response.write_eof()
                elif self.request.transport is not None:
                    self.request.transport.close()
            except (ConnectionError, RuntimeError):
                pass
        if not self.done.done():
            self.done.set_result(None)


@dataclass(slots=True, eq=False)
class LiveRun:
    """A run this process drives, with what its waiters need."""

    run: Run
    sink: ClientSink | None = None
    """The held original client, until an attempt streams into it or it is redirected."""
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
        return self.sink is None and self.waiters == 0 and not self.in_attempt


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
