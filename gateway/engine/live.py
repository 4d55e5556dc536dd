"""A run held in memory: its streamed response and the waiters' change signal.

Owned by the driver; the ingress and result handlers only read it and wait on it. Nothing
here touches a connection: the HTTP edge follows the stream into its clients'.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.engine.changes import settle
from gateway.engine.runs import Run
from gateway.engine.stream import Stream
from gateway.store import IdempotencyKey


@dataclass(slots=True, eq=False)
class LiveRun:
    """A run this process drives, with what its waiters need."""

    run: Run
    stream: Stream | None = None
    """The response as it streams, once an attempt began one (see `stream.py`)."""
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
    lost: bool = False
    """Another node took the run over: its held clients go to the result URL."""
    waiting: str | None = None
    """Why its next attempt is held back beyond its backoff (`gate.Waiting`), until
    `run.wake_at`; None otherwise."""
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
            settle(change)

    @property
    def evictable(self) -> bool:
        """Nobody waits on it here: a suspended run can live in the store alone."""
        return self.waiters == 0 and not self.in_attempt
