"""Server-sent events the gateway adds to a streamed response, and finding an event by id.

The gateway speaks into an SSE stream only between events (a comment or an event of
its own in the middle of a backend's event would corrupt it), except for the messages
that end a stream, which first close whatever event was cut off.
"""

from __future__ import annotations

import os
from typing import Final

import orjson

HEARTBEAT: Final = float(os.environ.get("DURABLE_TEST_SSE_HEARTBEAT", "15"))
"""Seconds of silence, while a stream waits across a backoff or suspension, before a
comment keeps the connection (and the proxies on its way) alive. Tests shorten it."""

KEEP_ALIVE: Final = b": keep-alive\n\n"


def event(name: str, data: dict[str, object], *, at_boundary: bool) -> bytes:
    """An event of the gateway's own; when the stream stopped inside an event, a blank
    line ends that one first."""
    lead = b"" if at_boundary else b"\n\n"
    return lead + b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def ends_event(last: bytes) -> bool:
    """Whether a stream whose last bytes are `last` stopped between events."""
    return not last or last.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))


class Seek:
    """Scans an SSE body for the end of the event whose `id` is `wanted`, so a client
    that sends `Last-Event-ID` gets only what follows it.

    Lines are kept only up to a short prefix: an `id:` field is all this looks for.
    """

    __slots__ = ("wanted", "_line", "_id")

    _KEEP = 1024

    def __init__(self, wanted: str) -> None:
        self.wanted = wanted.encode()
        self._line = bytearray()
        self._id: bytes | None = None

    def scan(self, data: bytes) -> int | None:
        """Feed the next bytes; the index in `data` just past the wanted event's end,
        or None when it has not ended within them. Lines end in LF or CRLF."""
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            room = self._KEEP - len(self._line)
            if room > 0:
                self._line += piece[:room]
            if end < 0:
                return None
            start = end + 1
            if self._end_line():
                return start

    def _end_line(self) -> bool:
        """A line ended; True when it was the blank line dispatching the wanted event."""
        line = bytes(self._line).removesuffix(b"\r")
        self._line.clear()
        if line:
            if line == b"id" or line.startswith(b"id:"):
                value = line[3:]
                self._id = value[1:] if value.startswith(b" ") else value
            return False
        found = self._id == self.wanted
        self._id = None
        return found
