"""The durable routes' upstream client: HTTP/1.1 on a keep-alive pool, parsed by httptools.

A durable attempt always holds its whole request in memory and wants nothing of a general
client but the exchange itself: no redirects, cookies, decompression, proxies or streamed
uploads. aiohttp's client spent about 50 µs of CPU per call on those, as much as the
whole run's bookkeeping; this one spends under 10 (`python -m bench.clients`). Plain
(`durable: false`) routes stream their bodies and keep aiohttp's client.

Failures raise `UpstreamError` (refused, reset, closed early, not HTTP) or `TimeoutError`
(the upstream sent nothing for the attempt's timeout, or no connection was free within it).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEADER_BYTES = 256 * 1024
"""A response whose header block is larger is refused (memory stays bounded)."""
HIGH_WATER = 256 * 1024
"""Body bytes buffered unread before the socket stops being read (a slow client)."""
IDLE_TTL = 15.0
"""A pooled connection idle longer than this is closed instead of reused."""
MAX_IDLE = 256
"""Idle connections kept per origin; more are closed when they come back."""
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "DELETE", "CONNECT"})


class UpstreamError(Exception):
    """No usable response: refused, reset, closed early, or not HTTP."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a route's upstream lives, parsed once per base URL."""

    host: str
    port: int
    tls: bool
    prefix: str
    """The base URL's path, put before every request's path."""
    host_header: str
    authorization: str | None
    """`Basic …` when the base URL carries user:password."""


@functools.lru_cache(maxsize=256)
def origin(base_url: str) -> Origin:
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    host = parts.hostname or ""
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return Origin(host, port, tls, parts.path.rstrip("/"), host_header, auth)


def encode_head(
    method: str, target: str, origin: Origin, headers: Iterable[tuple[str, str]], length: int
) -> bytes:
    """The request line and headers; `Host` and `Content-Length` are the client's to set."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    if origin.authorization is not None:
        lines.append(f"Authorization: {origin.authorization}\r\n")
    if length or method not in _BODILESS:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) + 1:  # a CR or LF inside a name, value or target
        raise UpstreamError("request line or header contains a line break")
    return text.encode("utf-8", "surrogateescape")


class Response:
    """One upstream response: status and headers at once, the body as it arrives.

    Call `release()` when done: a connection whose response was read to the end goes
    back to the pool, any other is closed.
    """

    __slots__ = (
        "status",
        "headers",
        "content_length",
        "_conn",
        "_parser",
        "_head_only",
        "_raw",
        "_header_bytes",
        "_headers_done",
        "_informational",
        "_until_close",
        "_chunks",
        "_buffered",
        "_complete",
        "_error",
        "_waiter",
        "_keep_alive",
        "_released",
        "_timer",
        "_timeout",
        "_paused",
        "_read_all",
    )

    def __init__(self, conn: _Connection, head_only: bool, timeout: float) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _EMPTY
        self.content_length: int | None = None
        self._conn = conn
        # Calls the on_* methods below. The parser holds this response's bound methods,
        # a cycle that `release` breaks, so a response never waits for the collector.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._raw: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._headers_done = False
        self._informational = False
        self._until_close = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._released = False
        self._timeout = timeout
        self._paused = False
        self._read_all = False
        loop = conn.loop
        due = conn.last_data + timeout
        self._timer: asyncio.TimerHandle | None = loop.call_at(due, self._silent)

    # --- reading (the attempt's side) ----------------------------------------------------

    async def read(self) -> bytes:
        """The whole body."""
        self._read_all = True
        self._resume()
        while not self._complete:
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in, reading paused while the caller lags."""
        while True:
            if self._chunks:
                chunk = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                self._resume()
                yield chunk
            elif self._complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._parser = None
        self._stop_timer()
        conn = self._conn
        conn.response = None
        if self._complete and self._keep_alive and not self._paused:
            conn.pool.put(conn)
        else:
            conn.close()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._complete:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._conn.last_data = self._conn.loop.time()
            self._conn.resume()

    def _fail(self, error: BaseException) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        self._stop_timer()
        self._conn.close()
        self._wake()

    def _done(self) -> None:
        self._complete = True
        self._stop_timer()
        self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _silent(self) -> None:
        """The timer: fail when the upstream has been silent for the whole timeout."""
        loop = self._conn.loop
        now = loop.time()
        due = now + self._timeout if self._paused else self._conn.last_data + self._timeout
        if due > now:
            self._timer = loop.call_at(due, self._silent)
            return
        self._timer = None
        what = "response body" if self._headers_done else "response"
        self._fail(TimeoutError(f"no {what} bytes within {self._timeout:g}s"))

    # --- parsing (the connection's side) --------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Ended):
                return  # what follows is not this response's; the connection is not reused
            if not isinstance(cause, UpstreamError):
                cause = UpstreamError(f"malformed response from upstream: {exc}")
            self._fail(cause)

    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request
            self._keep_alive = False
            raise _Ended

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise UpstreamError(f"response headers exceed {MAX_HEADER_BYTES} bytes")
        self._raw.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # it is the caller
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the real one follows
            self._raw = []
            return
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(self._raw))
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit():
            self.content_length = int(length)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        self._until_close = length is None and not chunked and status not in (204, 304)
        self._headers_done = True
        if self._head_only:  # no body follows, whatever the headers say
            self._done()
            raise _Ended
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._read_all and not self._paused:
            self._paused = True
            self._conn.pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        assert self._parser is not None  # it is the caller
        self._keep_alive = self._parser.should_keep_alive()
        self._done()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._complete:
            return
        if self._headers_done and self._until_close and exc is None:
            self._done()  # a body framed by the connection's end has ended
            return
        what = "response body" if self._headers_done else "response"
        reason = f": {exc}" if exc is not None else ""
        self._fail(UpstreamError(f"upstream closed the connection before the {what} ended{reason}"))


_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Ended(Exception):
    """Raised in a parser callback to stop parsing once the response has ended: bytes
    past it (or a HEAD response's body) are not read, and the connection is not reused."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; feeds whatever arrives to its current response."""

    __slots__ = (
        "pool",
        "origin",
        "loop",
        "transport",
        "response",
        "closed",
        "idle_since",
        "last_data",
        "used",
    )

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_data = 0.0
        self.used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._complete:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.last_data = self.loop.time()
        response.feed(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.closed(self)
        if self.response is not None:
            self.response.connection_lost(exc)

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.pool.closed(self)


class Pool:
    """Keep-alive connections per origin, at most `limit` open at once."""

    def __init__(self, limit: int = 1024) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tls: ssl.SSLContext | None = None

    async def request(
        self,
        base_url: str,
        method: str,
        path_qs: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        silence: float,
    ) -> Response:
        """Send a request and return once the response's headers are in.

        `silence` bounds the wait for the headers from the start, waiting for room under
        the pool's limit and connecting included, and then every silence of the upstream
        while the body arrives. A request that
        fails on a reused connection before any answer is sent again on a new one when
        its method is idempotent, as a keep-alive race may cause that.
        """
        where = origin(base_url)
        head = encode_head(method, where.prefix + path_qs, where, headers, len(body))
        message = head + body if len(body) < 65536 else None
        started = self.loop.time()
        for fresh in (False, True):
            conn = None if fresh else self._take_idle(where)
            if conn is None:
                conn = await self._connection(where, started + silence, silence, fresh)
            reused = conn.used
            conn.used = True
            conn.last_data = started
            response = conn.response = Response(conn, method == "HEAD", silence)
            assert conn.transport is not None
            if message is not None:
                conn.transport.write(message)
            else:
                conn.transport.writelines((head, body))
            try:
                while not response._headers_done and not response._complete:
                    await response._wait()
            except UpstreamError:
                response.release()
                if reused and not fresh and method in _IDEMPOTENT and not response._raw:
                    continue
                raise
            except BaseException:
                response.release()
                raise
            return response
        raise AssertionError("unreachable")

    async def _connection(
        self, where: Origin, deadline: float, budget: float, fresh: bool
    ) -> _Connection:
        """A new connection to `where` within the limit, by `deadline` (loop time, the end
        of the request's `budget`); while waiting for room, one that comes back idle
        (unless `fresh`). The caller has looked for an idle one already."""
        while len(self._open) >= self.limit and not self._evict_idle():
            waiter = self.loop.create_future()
            self._queue.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:  # timed out or cancelled: leave the queue
                if waiter in self._queue:
                    self._queue.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_one()  # room came as this wait ended: the next waiter's
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(
                        f"no free upstream connection within {budget:g}s "
                        f"({self.limit} open, the pool's limit)"
                    ) from None
                raise
            if not fresh and (idle := self._take_idle(where)) is not None:
                return idle
        conn = _Connection(self, where)
        self._open.add(conn)
        try:
            async with asyncio.timeout_at(deadline):
                await self.loop.create_connection(
                    lambda: conn,
                    where.host,
                    where.port,
                    ssl=self._tls_context() if where.tls else None,
                )
        except TimeoutError:
            conn.close()
            where_to = f"{where.host}:{where.port}"
            raise TimeoutError(f"could not connect to {where_to} within {budget:g}s") from None
        except OSError as exc:
            conn.close()
            raise UpstreamError(f"cannot connect to {where.host}:{where.port}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _take_idle(self, where: Origin) -> _Connection | None:
        idle = self._idle.get(where)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TTL:
                return conn
            conn.close()
        return None

    def _evict_idle(self) -> bool:
        """Close an idle connection to another origin to make room under the limit."""
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    conn.close()
                    return True
        return False

    def put(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly: keep it for the next request."""
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= MAX_IDLE:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)
        self._wake_one()

    def closed(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
