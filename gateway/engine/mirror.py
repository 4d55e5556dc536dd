"""Streams of runs another node drives, mirrored from the store for this node's clients.

On a shared store a result URL may be asked of any node while the run streams on
another. That node writes the body's chunks as they come (64 KiB, or what came in the
last second); this one reads the run's stored body every POLL seconds while anyone here
follows it, and its clients read the bytes from the store at their own pace (see
`http/held.py`). One mirror per run, however many follow it; it stops with its last
follower or when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from gateway.engine.stream import Ended, Stream
from gateway.errors import StoreUnavailable
from gateway.store import FullStore, RunStatus
from gateway.store.writer import Writer
from gateway.tasks import spawn

log = logging.getLogger("gateway.engine.mirror")

POLL = 0.25
"""Seconds between reads of a mirrored run's stored body."""


@dataclass(slots=True)
class _Mirror:
    stream: Stream
    followers: int = 1
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Mirrors:
    """The mirrored streams of this node, by run id."""

    def __init__(self, store: FullStore, writer: Writer) -> None:
        self._store = store
        self._writer = writer
        self._open: dict[str, _Mirror] = {}

    async def follow(self, run_id: str, cap: int) -> Stream | None:
        """The stream of a run that streams elsewhere, for one more follower (call
        `leave` when done); None when the store holds no body of it yet."""
        mirror = self._open.get(run_id)
        if mirror is not None:
            mirror.followers += 1
            return mirror.stream
        row = await self._store.get_body(run_id)
        mirror = self._open.get(run_id)  # opened by another follower meanwhile
        if mirror is not None:
            mirror.followers += 1
            return mirror.stream
        if row is None:
            return None
        stream = Stream.from_store(run_id, self._store, self._writer, cap, row)
        stream.mirror(row, streaming=True)
        mirror = _Mirror(stream)
        mirror.task = spawn(self._poll(run_id, stream), name=f"mirror-{run_id}")
        self._open[run_id] = mirror
        return stream

    def leave(self, run_id: str) -> None:
        mirror = self._open.get(run_id)
        if mirror is None:
            return
        mirror.followers -= 1
        if mirror.followers <= 0:
            del self._open[run_id]
            if mirror.task is not None:
                mirror.task.cancel()

    async def _poll(self, run_id: str, stream: Stream) -> None:
        """Follow the store until the run ends; a store fault is waited out."""
        while stream.ended is None:
            await asyncio.sleep(POLL)
            with contextlib.suppress(StoreUnavailable):
                await self._look(run_id, stream)

    async def _look(self, run_id: str, stream: Stream) -> None:
        run = await self._store.get_run(run_id)
        row = await self._store.get_body(run_id)
        if run is None:  # purged: nothing more will come
            stream.end(Ended.STOPPED)
            return
        if row is not None:
            stream.mirror(row, streaming=run.status == RunStatus.RUNNING)
        response = run.response
        if run.status == RunStatus.CANCELLED:
            stream.end(Ended.CANCELLED)
        elif response is not None:  # finished: with this body whole, or with another
            whole = response.kept is not None and row is not None and response.kept == row.size
            stream.end(Ended.WHOLE if whole and response.status == stream.status else Ended.FAILED)
