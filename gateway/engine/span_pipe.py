"""Hands the engine's span events to the exporter's own process (`span_export.py`).

The event loop only appends each event to a list; every 50 ms the list goes to the
exporter's stdin as one JSON line, written without waiting. So building, encoding and
posting spans (about 20 µs of CPU per 0-step request) never take the gateway's loop.

Bounded: at most `MAX_EVENTS` wait here and `MAX_PIPE` bytes in the pipe; past either,
events are dropped and counted. The exporter reports its counts once a second on its
stdout (they become this process's metrics). If it dies it is started again, after a
pause that doubles up to 30 s; a gateway that dies closes the pipe, and the exporter
posts what it holds and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Final

import orjson

from gateway import metrics
from gateway.config import TracingConfig
from gateway.engine.span_export import DROPPED, config_line
from gateway.engine.spans import Event
from gateway.logs import Burst
from gateway.tasks import spawn

log = logging.getLogger("gateway.engine.span_pipe")

FLUSH_EVERY: Final = 0.05
MAX_EVENTS: Final = 50_000
"""Events waiting for the next write at most."""
MAX_PIPE: Final = 16 * 1024 * 1024
"""Bytes written to the exporter and not yet read by it at most."""
LINE_EVENTS: Final = 5_000
"""Events per line at most, so a line stays far below the exporter's `MAX_LINE`."""
MAX_RESTART: Final = 30.0


class SpanPipe:
    """`spans.Sink` to the exporter's process."""

    def __init__(self, config: TracingConfig) -> None:
        self._config = config
        self._events: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._closing = False
        self._failing = Burst(log, "the span exporter", "stopped, starting it again")
        self._counted = dict.fromkeys(("exported", *DROPPED), 0.0)
        """What the running exporter has reported so far (its counts start at 0)."""

    def start(self) -> None:
        """Start the exporter's process (the first event would, else)."""
        if self._task is None:
            self._task = spawn(self._run(), name="span-pipe")

    def put(self, event: Event) -> None:
        if len(self._events) >= MAX_EVENTS:
            metrics.child(metrics.SPANS_DROPPED, "queue_full").inc()
            return
        self._events.append(event)
        if self._task is None:
            self.start()

    async def _run(self) -> None:
        pause = 0.0
        while not self._closing:
            started = time.monotonic()
            try:
                proc = await self._start()
            except OSError as exc:
                self._failing.failed(exc)
            else:
                reading = spawn(self._read_counts(proc), name="span-pipe-counts")
                while proc.returncode is None and not self._closing:
                    await asyncio.sleep(FLUSH_EVERY)
                    self._write(proc)
                if proc.returncode is None:  # closing: `close` ends it
                    reading.cancel()
                    return
                await asyncio.gather(reading, return_exceptions=True)
                self._failing.failed(f"it exited with status {proc.returncode}")
            if time.monotonic() - started > MAX_RESTART:  # it ran a while: not a crash loop
                pause = 0.0
            pause = min(MAX_RESTART, max(1.0, pause * 2))
            dropped = len(self._events)
            self._events = []
            metrics.child(metrics.SPANS_DROPPED, "exporter_down").inc(dropped)
            await asyncio.sleep(pause)

    async def _start(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.engine.span_export",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,  # its counts: short lines (the default limit)
        )
        self._counted = dict.fromkeys(self._counted, 0.0)
        assert proc.stdin is not None
        proc.stdin.write(config_line(self._config))  # secrets stay out of its command line
        self._proc = proc
        config = self._config
        log.info(
            "tracing: spans go to %s as %s (exporter pid %d)",
            config.traces_url,
            config.service_name,
            proc.pid,
        )
        return proc

    def _write(self, proc: asyncio.subprocess.Process) -> None:
        """The events so far, as lines on the exporter's stdin; never waits."""
        events, self._events = self._events, []
        stdin = proc.stdin
        if not events:
            return
        if stdin is None or stdin.is_closing():  # it is exiting: `_run` starts another
            metrics.child(metrics.SPANS_DROPPED, "exporter_down").inc(len(events))
            return
        for i in range(0, len(events), LINE_EVENTS):
            line = orjson.dumps(events[i : i + LINE_EVENTS]) + b"\n"
            if stdin.transport.get_write_buffer_size() + len(line) > MAX_PIPE:
                dropped = len(events) - i
                metrics.child(metrics.SPANS_DROPPED, "queue_full").inc(dropped)
                return
            stdin.write(line)

    async def _read_counts(self, proc: asyncio.subprocess.Process) -> None:
        """The exporter's counts, into this process's metrics as they grow."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            with contextlib.suppress(ValueError):
                counts = orjson.loads(line)
                for name, before in self._counted.items():
                    now = float(counts.get(name, before))
                    if now > before:
                        if name == "exported":
                            metrics.SPANS_EXPORTED.inc(now - before)
                        else:
                            metrics.child(metrics.SPANS_DROPPED, name).inc(now - before)
                        self._counted[name] = now
                self._failing.ok()

    async def close(self, grace: float = 5.0) -> None:
        """Hand over what is left, close the pipe, and give the exporter `grace` seconds
        (and one more) to post what it holds."""
        self._closing = True
        proc = self._proc
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if proc is None or proc.returncode is not None:
            return
        self._write(proc)
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            async with asyncio.timeout(grace + 1):
                await proc.wait()
        except TimeoutError:
            log.warning("the span exporter did not stop within %.0fs: killed", grace + 1)
            proc.kill()
            await proc.wait()
