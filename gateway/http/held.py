"""The held client's connection: drains an attempt's feed into it at the client's pace.

The engine pushes the final response into a bounded `Feed` and never waits here; this
side writes it out and cuts the connection of a client the feed detached (too slow, or
gone). Never blocks the attempt, and never holds more than the feed's bound per client.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct

from aiohttp import web

from gateway import metrics
from gateway.engine.live import Detached, Feed
from step_protocol import wire

log = logging.getLogger("gateway.http.held")

_LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() resets the connection, dropping what the
kernel still buffers for the client, instead of trickling it out to a slow reader."""


async def stream(
    request: web.BaseRequest, feed: Feed, route: str, run_id: str, result: str
) -> web.StreamResponse:
    """Write the feed's response to the client until it ends or the client is detached;
    `result` (its run's result URL) goes out as `Durable-Result`."""
    response = web.StreamResponse(status=feed.status)
    for name, value in feed.headers:
        response.headers.add(name, value)
    response.headers[wire.RESULT] = result
    feed.on_detach = lambda: _reset(request)
    sent = 0
    ended = False
    try:
        await response.prepare(request)
        while True:
            chunk = feed.take()
            if chunk is not None:
                await response.write(chunk)
                sent += len(chunk)
            elif feed.detached is not None:
                break
            elif feed.finished:
                feed.on_detach = None
                if feed.ok:
                    await response.write_eof()
                elif request.transport is not None:
                    request.transport.close()  # an incomplete body: never a spliced one
                ended = True
                return response
            else:
                await feed.changed()
    except ConnectionError:
        feed.detach(Detached.GONE)  # keeps SLOW when that is why the connection was cut
    finally:
        if not ended:  # cancelled, say: the engine must not feed a client nobody drains
            feed.detach(Detached.GONE)
    why = feed.detached
    assert why is not None
    metrics.child(metrics.DETACHED, route, why.value).inc()
    if why is Detached.SLOW:
        log.info(
            "client cut off after %d bytes: it fell over %d bytes behind the upstream; "
            "the run goes on and its result URL will have the whole response",
            sent,
            feed.limit,
            extra={"run_id": run_id},
        )
    else:
        log.info("client left after %d bytes; the run goes on", sent, extra={"run_id": run_id})
    return response


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
