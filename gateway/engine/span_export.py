"""Spans out over OTLP/HTTP, by a process of its own: `python -m gateway.engine.span_export`.

The gateway (`span_pipe.py`) writes what happened to its runs to this process's stdin,
as JSON lines of events (`spans.Spans`); here each becomes its span (`span_build.py`),
is encoded as OTLP protobuf (`otlp.py`) and is posted in batches. None of it takes the
gateway's event loop.

Kept lean (the standard library, orjson, the config's shape): one thread reads and
encodes, the main one posts. Spans wait as bytes until posted, bounded in bytes: past
`QUEUE_BYTES` new ones are dropped and counted. A batch goes out when full or a second
old; a collector that fails or is down gets it again after a backoff (doubling to 30 s).
At the end of stdin (the gateway stopped, or died) what is queued is posted, for up to
`GRACE` seconds, and the process exits.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from gateway import logs
from gateway.config.model import TracingConfig
from gateway.engine.otlp import encode_span, request_body, resource_head
from gateway.engine.span_build import Span, build
from gateway.logs import Burst

log = logging.getLogger("gateway.engine.span_export")

QUEUE_BYTES: Final = 16 * 1024 * 1024
"""Encoded spans waiting for export at most: a collector that is down costs no more."""
BATCH_BYTES: Final = 1024 * 1024
"""A batch is posted once this big (collectors take 4 MiB and more by default)."""
DELAY: Final = 1.0
"""Longest a span waits to be posted."""
TIMEOUT: Final = 10.0
"""Longest one post may take."""
MAX_BACKOFF: Final = 30.0
GRACE: Final = 5.0
"""Seconds given at the end of stdin to post what is queued."""
_RETRIED: Final = frozenset({429, 502, 503, 504})
"""Statuses OTLP/HTTP says to retry; any other failure drops the batch."""
DROPPED: Final = ("queue_full", "refused")
"""Why spans were not exported, as counted (`durable_trace_spans_dropped_total`)."""
MAX_RESPONSE: Final = 64 * 1024
"""Bytes of a collector's answer read at most (it says little: its status matters)."""
MAX_LINE: Final = 64 * 1024 * 1024
"""Longest line of events the gateway writes (it writes far shorter ones)."""


class Exporter:
    """Spans encoded as they come (`export`, from the reading thread) and posted in
    batches by `post_until_closed` (the main thread)."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.traces_url is not None
        self.url = config.traces_url
        parts = urlsplit(self.url)
        self._connect: Callable[[], http.client.HTTPConnection] = functools.partial(
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection,
            parts.hostname or "",
            parts.port,
            timeout=TIMEOUT,
        )
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **dict(config.headers)}
        self._head = resource_head(config)
        self._spans: list[bytes] = []
        self._queued = 0
        """Bytes of encoded spans not yet posted, the batch being posted included."""
        self._changed = threading.Condition()
        self._closing_at: float | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._failing = Burst(log, f"exporting spans to {self.url}")
        self.counts = dict.fromkeys(("exported", *DROPPED), 0)

    def export(self, span: Span) -> None:
        data = encode_span(span)
        with self._changed:
            if self._queued + len(data) > QUEUE_BYTES:
                self.counts["queue_full"] += 1
                return
            self._spans.append(data)
            self._queued += len(data)
            if self._queued >= BATCH_BYTES:
                self._changed.notify()

    def close(self, grace: float = GRACE) -> None:
        """No more spans come: post what is queued for up to `grace` seconds, then stop."""
        with self._changed:
            self._closing_at = time.monotonic() + grace
            self._changed.notify()

    def post_until_closed(self, report: Callable[[dict[str, int]], None]) -> None:
        """Post batches until closed and empty (or out of grace); `report` gets the counts
        after each batch, and once a second."""
        batch: list[bytes] = []
        backoff = 0.0
        while True:
            if not batch:
                batch = self._next_batch()
                report(self.counts)
                if not batch:
                    if self._closing_at is not None:
                        return
                    continue
            if self._out_of_grace():
                self.counts["queue_full"] += len(batch) + len(self._spans)
                report(self.counts)
                log.warning("%d spans not exported at shutdown", len(batch) + len(self._spans))
                return
            retry_after = self._post(batch)
            if retry_after is None:
                with self._changed:
                    self._queued -= sum(map(len, batch))
                batch, backoff = [], 0.0
                continue
            backoff = min(MAX_BACKOFF, max(1.0, backoff * 2, retry_after))
            self._pause(backoff)

    def _pause(self, seconds: float) -> None:
        """Wait before a batch is tried again: `seconds`, or until the grace of a close
        that comes meanwhile is over."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while True:
                end = deadline if self._closing_at is None else min(deadline, self._closing_at)
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def _out_of_grace(self) -> bool:
        return self._closing_at is not None and time.monotonic() >= self._closing_at

    def _next_batch(self) -> list[bytes]:
        """Spans up to BATCH_BYTES (at least one), once there are enough, a second has
        passed, or closing asks for the rest."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._queued >= BATCH_BYTES or self._closing_at is not None, DELAY
            )
            size, count = 0, 0
            for data in self._spans:
                if count and size + len(data) > BATCH_BYTES:
                    break
                size += len(data)
                count += 1
            batch, self._spans = self._spans[:count], self._spans[count:]
            return batch

    def _post(self, batch: list[bytes]) -> float | None:
        """Post one batch: None once it is done with (sent, or refused for good), else the
        seconds to wait before it is tried again."""
        body = request_body(self._head, batch)
        try:
            if self._conn is None:
                self._conn = self._connect()
            self._conn.request("POST", self._target, body, self._headers)
            resp = self._conn.getresponse()
            resp.read(MAX_RESPONSE)
            if not resp.isclosed():  # more than a collector says: not worth reading
                self._conn.close()
                self._conn = None
            status, retry_after = resp.status, resp.getheader("Retry-After") or ""
        except (OSError, http.client.HTTPException) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._failing.failed(f"{type(exc).__name__}: {exc}")
            return 0.0
        if status < 300:
            self._failing.ok()
            self.counts["exported"] += len(batch)
            return None
        if status in _RETRIED:
            self._failing.failed(f"status {status}")
            return float(retry_after) if retry_after.isdigit() else 0.0
        self._failing.failed(f"status {status}: the batch of {len(batch)} spans is dropped")
        self.counts["refused"] += len(batch)
        return None


# ── the process ─────────────────────────────────────────────────────────────────


def config_line(config: TracingConfig) -> bytes:
    """The first line the gateway writes: what to export to, and how to log."""
    level, fmt = logs.current()
    return orjson.dumps({"tracing": dataclasses.asdict(config), "log": [level, fmt]}) + b"\n"


def _config(data: dict[str, Any]) -> TracingConfig:
    fields: dict[str, Any] = dict(data)
    for name in ("resource_attributes", "headers"):  # JSON made its pairs lists
        fields[name] = tuple(tuple(pair) for pair in fields[name])
    return TracingConfig(**fields)


def _read(exporter: Exporter) -> None:
    """Events from stdin into the exporter, until the gateway closes the pipe."""
    stdin = sys.stdin.buffer
    try:
        while line := stdin.readline(MAX_LINE):
            for event in orjson.loads(line):
                exporter.export(build(event))
    finally:
        exporter.close()


def _reporter() -> Callable[[dict[str, int]], None]:
    """Writes the counts on stdout, for the gateway's metrics, when they changed."""
    last = b""

    def report(counts: dict[str, int]) -> None:
        nonlocal last
        line = orjson.dumps(counts) + b"\n"
        if line != last:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            last = line

    return report


def main() -> None:
    """Ignore the signals a terminal or service manager sends the gateway's whole group:
    this process stops when the gateway closes its end of the pipe, once it has posted
    what it holds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    first = orjson.loads(sys.stdin.buffer.readline(MAX_LINE))
    logs.setup(*first["log"])
    exporter = Exporter(_config(first["tracing"]))
    threading.Thread(target=_read, args=(exporter,), name="otlp-read", daemon=True).start()
    exporter.post_until_closed(_reporter())


if __name__ == "__main__":
    main()
