"""The live runs of this process: by id, by idempotency key, and who waits to hear of one.

Owned by the driver and its runner, which add and forget runs; everything else only
looks runs up (through the driver or the run view).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator

from gateway import metrics
from gateway.engine.live import LiveRun


class Registry:
    __slots__ = ("_live", "_idempotent", "_watchers")

    def __init__(self) -> None:
        self._live: dict[str, LiveRun] = {}
        self._idempotent: dict[tuple[str, str], LiveRun] = {}
        """Live runs by (route, Idempotency-Key): a concurrent duplicate attaches at once."""
        self._watchers: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        """Result URLs long-polling a run that lives in the store; gone when they leave."""

    def get(self, run_id: str) -> LiveRun | None:
        return self._live.get(run_id)

    def trace_id(self, run_id: str) -> str | None:
        """The trace id of a live run (`logs.find_traces`)."""
        live = self._live.get(run_id)
        return None if live is None else live.run.trace.trace_id

    def attached(self, route: str, key: str) -> LiveRun | None:
        """The live run an idempotency key belongs to, if it is live here."""
        return self._idempotent.get((route, key))

    def __iter__(self) -> Iterator[LiveRun]:
        return iter(self._live.values())

    def add(self, live: LiveRun) -> None:
        """A run becomes live here: index it, and wake whoever watched for it."""
        run = live.run
        # WeakValueDictionary.pop is Python code: skip it in the usual case of no watcher.
        if self._watchers and (watcher := self._watchers.pop(run.run_id, None)) is not None:
            watcher.set()
        self._live[run.run_id] = live
        if live.idempotency is not None:
            self._idempotent[run.route.name, live.idempotency.key] = live
        metrics.IN_FLIGHT.inc()

    def forget(self, run_id: str) -> None:
        """Drop a run from memory: finished and stored, or parked in the store alone."""
        live = self._live.pop(run_id, None)
        if live is not None:
            metrics.IN_FLIGHT.dec()
            if live.idempotency is not None:
                self._idempotent.pop((live.run.route.name, live.idempotency.key), None)

    def wake(self, run_id: str) -> None:
        """The run changed in the store (on another node): its watchers re-read it."""
        if self._watchers and (watcher := self._watchers.pop(run_id, None)) is not None:
            watcher.set()

    def wake_all(self) -> None:
        """Changes may have been missed: every watcher re-reads the store."""
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for watcher in watchers:
            watcher.set()

    def watch(self, run_id: str) -> asyncio.Event:
        """An event set when a run now only in the store becomes live here (is resumed)."""
        event = self._watchers.get(run_id)
        if event is None:
            self._watchers[run_id] = event = asyncio.Event()
        return event
