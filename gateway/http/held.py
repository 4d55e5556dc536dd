"""A client following a run's streamed response: the held client, or a result URL's.

Reads the stream at the client's pace: from memory while close behind the upstream,
from the store when further back, so a slow client never slows its run and costs a
bounded amount of memory. Carries the stream across retries: a reset (SSE) or an
aborted response when a retry diverges, heartbeats while it waits, the result URL when
the wait passes `hold`, and how it ends when the run is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from dataclasses import dataclass

from aiohttp import web

from gateway import metrics
from gateway.engine.changes import until_changed
from gateway.engine.stream import Detached, Ended, Reader, Stream
from gateway.http import sse
from step_protocol import wire

log = logging.getLogger("gateway.http.held")

_LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() resets the connection, dropping what the
kernel still buffers for the client, instead of trickling it out to a slow reader."""


@dataclass(slots=True)
class Follow:
    """How one client follows a stream."""

    route: str
    run_id: str
    result: str
    """The run's result URL, sent as `Durable-Result` and in the gateway's SSE events."""
    hold: float
    """Seconds it may wait in silence across a retry or suspension before it is sent
    to the result URL (SSE) or its response is aborted."""
    start: int = 0
    """Byte to start at (`Range`)."""
    end: int | None = None
    """Byte to stop before, for a finished body (its size, or a range's end): then the
    response says its length."""
    last_event_id: str | None = None
    status: int | None = None
    """The status to answer with, when not the stream's (206 for a range)."""
    extra: tuple[tuple[str, str], ...] = ()


async def follow(request: web.BaseRequest, stream: Stream, how: Follow) -> web.StreamResponse:
    """Stream the run's response to the client until it ends, is reset beyond repair,
    or the client is detached."""
    response = web.StreamResponse(status=how.status or stream.status)
    for name, value in stream.headers:
        response.headers.add(name, value)
    for name, value in how.extra:
        response.headers[name] = value
    response.headers[wire.RESULT] = how.result
    if how.end is not None:
        response.content_length = how.end - how.start
    head = (stream.status, stream.content_type)
    sse_stream = stream.sse
    reader = stream.join(how.start)
    reader.on_detach = lambda: _reset(request)
    seek = sse.Seek(how.last_event_id) if how.last_event_id and sse_stream else None
    last = b""  # the last bytes sent, to know whether the client is between two events
    joined = quiet_since = time.monotonic()
    try:
        await response.prepare(request)
        while reader.detached is None:
            if reader.epoch != stream.epoch:  # a retry diverged
                if not sse_stream:
                    return _abort(request, response)
                await response.write(_reset_event(stream, how, last))
                if (stream.status, stream.content_type) != head:
                    await response.write_eof()
                    return response
                reader.epoch, reader.pos, last = stream.epoch, 0, b""
                seek = None
                continue
            chunk = stream.peek(reader.pos)
            if chunk is None:
                chunk = await stream.read_stored(reader.pos)
                if reader.epoch != stream.epoch:
                    continue
                if not chunk:  # the store lacks what it should have: never send a splice
                    log.warning(
                        "stored response missing at byte %d",
                        reader.pos,
                        extra={"run_id": how.run_id},
                    )
                    return _abort(request, response)
            if how.end is not None:
                chunk = chunk[: how.end - reader.pos]
                if not chunk:
                    await response.write_eof()
                    return response
            if chunk:
                reader.pos += len(chunk)
                if seek is not None:
                    found = seek.scan(chunk)
                    if found is None:
                        continue
                    chunk, seek = chunk[found:], None
                if chunk:
                    await response.write(chunk)
                    last = (last + chunk[-4:])[-4:]
                    quiet_since = time.monotonic()
                stream.moved()
                continue
            if seek is not None and stream.ended is Ended.WHOLE:
                reader.pos, seek = 0, None  # no event of that id: the whole body
                continue
            ended = stream.ended
            if ended is Ended.WHOLE:
                await response.write_eof()
                return response
            if ended is not None:
                return await _end(request, response, stream, ended, how, last)
            now = time.monotonic()
            stalled = stream.stalled_since
            if not stream.live and stalled is not None:
                stalled = max(stalled, joined)
                if now - stalled >= how.hold:
                    return await _end(request, response, stream, Ended.STOPPED, how, last)
                if sse_stream and now - quiet_since >= sse.HEARTBEAT and sse.ends_event(last):
                    await response.write(sse.KEEP_ALIVE)
                    quiet_since = now
                    continue
                wait = min(stalled + how.hold, quiet_since + sse.HEARTBEAT) - now
            else:
                wait = how.hold
            await until_changed(stream.changed(), max(wait, 0.001))
    except ConnectionError:
        stream.detach(reader, Detached.GONE)  # keeps SLOW when that is why it was cut
    except asyncio.CancelledError:
        stream.detach(reader, Detached.GONE)
        _detached(reader, how)
        raise
    finally:
        stream.leave(reader)
    _detached(reader, how)
    return response


async def _end(
    request: web.BaseRequest,
    response: web.StreamResponse,
    stream: Stream,
    ended: Ended,
    how: Follow,
    last: bytes,
) -> web.StreamResponse:
    """End a stream the run will not complete here: SSE clients are told why and where
    the result will be, others get an aborted response (never a silently short one)."""
    if not stream.sse:
        return _abort(request, response)
    at_boundary = sse.ends_event(last)
    if ended is Ended.CANCELLED:
        message = sse.event("durable-cancelled", {"result": how.result}, at_boundary=at_boundary)
    elif ended is Ended.FAILED:
        message = _reset_event(stream, how, last)
    else:
        message = sse.event("durable-redirect", {"result": how.result}, at_boundary=at_boundary)
    await response.write(message)
    await response.write_eof()
    return response


def _reset_event(stream: Stream, how: Follow, last: bytes) -> bytes:
    """`durable-reset`: what the client has is not the result, and where the result is."""
    data = {"attempt": stream.attempt, "result": how.result}
    return sse.event("durable-reset", data, at_boundary=sse.ends_event(last))


def _abort(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
    """An incomplete body: the client sees an error, never a spliced or short one."""
    if request.transport is not None:
        request.transport.close()
    return response


def _detached(reader: Reader, how: Follow) -> None:
    why = reader.detached
    if why is None:
        return
    metrics.child(metrics.DETACHED, how.route, why.value).inc()
    if why is Detached.SLOW:
        log.info(
            "client cut off at byte %d: it fell too far behind the upstream past what is "
            "kept of the response",
            reader.pos,
            extra={"run_id": how.run_id},
        )
    else:
        log.info(
            "client left at byte %d; the run goes on", reader.pos, extra={"run_id": how.run_id}
        )


def _reset(request: web.BaseRequest) -> None:
    """Cut the client's connection at once."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
