"""Structured logs: one line per event, with the run's id and trace id when there is one.

`text` is for people (`ts level logger message run_id=… trace_id=…`), `json` for log
pipelines. Code that has the run passes `extra=run.trace.log` (both ids); code that only
has its id passes `extra={"run_id": …}`, and the trace id is looked up among the live
runs (`find_traces`). Nothing here does I/O but stderr.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Literal

import orjson

LogFormat = Literal["text", "json"]

_trace_of: Callable[[str], str | None] = lambda run_id: None  # noqa: E731


def find_traces(lookup: Callable[[str], str | None]) -> None:
    """Where a log line that names only a run id finds its trace id (the live runs)."""
    global _trace_of
    _trace_of = lookup


def _ids(record: logging.LogRecord) -> tuple[str | None, str | None]:
    run_id = getattr(record, "run_id", None)
    if not run_id:
        return None, None
    return run_id, getattr(record, "trace_id", None) or _trace_of(run_id)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage()
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name} {msg}"
        run_id, trace_id = _ids(record)
        if run_id:
            line += f" run_id={run_id}"
        if trace_id:
            line += f" trace_id={trace_id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        run_id, trace_id = _ids(record)
        if run_id:
            entry["run_id"] = run_id
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def current() -> tuple[str, LogFormat]:
    """The level and format `setup` gave, for a child process to log alike."""
    root = logging.getLogger()
    fmt: LogFormat = (
        "json" if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers) else "text"
    )
    return logging.getLevelName(root.level).lower(), fmt


def setup(level: str = "info", fmt: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Its debug lines carry every statement's parameters: request bodies, step outputs.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


class Burst:
    """Logs a background task's failures once per burst: a warning when the first one
    comes, a line when it works again. A loop retrying every second while the database
    is down would otherwise write a warning a second."""

    __slots__ = ("_log", "_what", "_failing", "_since", "_count")

    def __init__(self, log: logging.Logger, what: str, failing: str = "failing, retrying") -> None:
        self._log = log
        self._what = what
        self._failing = failing
        self._since: float | None = None
        self._count = 0

    def failed(self, error: object) -> None:
        self._count += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s %s: %s", self._what, self._failing, error)

    def ok(self) -> None:
        if self._since is not None:
            took = time.monotonic() - self._since
            self._log.info("%s recovered after %.1f s, %d failures", self._what, took, self._count)
            self._since, self._count = None, 0


class Throttle:
    """Info lines about what clients do wrong, at most `per_second` a second (in bursts of
    as many): a client sending garbage on purpose must not flood the log. Lines over the
    rate are counted, and the next line that passes says how many."""

    __slots__ = ("_log", "_rate", "_tokens", "_at", "_dropped")

    def __init__(self, log: logging.Logger, per_second: float = 10.0) -> None:
        self._log = log
        self._rate = per_second
        self._tokens = per_second
        self._at = time.monotonic()
        self._dropped = 0

    def info(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            self._dropped += 1
            return
        self._tokens -= 1
        if self._dropped:
            msg += " (%d more like it not logged)"
            args = (*args, self._dropped)
            self._dropped = 0
        self._log.info(msg, *args)
