"""A run held in memory: the held client's connection and the waiters' change signal.

Owned by the driver; the ingress and result handlers only read it and wait on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from gateway.runs import Run


class ClientSink:
    """The held client's connection: the attempt that turns out final streams into it."""

    __slots__ = ("request", "response", "alive", "done")

    def __init__(self, request: web.Request) -> None:
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
    idempotency: tuple[str, str, str] | None = None
    """(route, key, fingerprint) when the request carried an Idempotency-Key."""
    final_commit: asyncio.Future[None] | None = None
    """Resolves once the final response is committed."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def changed(self) -> asyncio.Event:
        """An event set at the run's next change; take it before reading the state."""
        return self._changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def evictable(self) -> bool:
        """Nobody waits on it here: a suspended run can live in the store alone."""
        return self.sink is None and self.waiters == 0 and not self.in_attempt
