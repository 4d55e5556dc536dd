"""The durable routes' upstream client against scripted HTTP servers on real sockets."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.upstream import pool as upstream
from gateway.upstream.pool import Pool, UpstreamError, encode_head, origin

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """A TCP server that runs a script on each connection and counts connections."""

    def __init__(self) -> None:
        self.script: Script | None = None
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        assert self.script is not None
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request's head and Content-Length body."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


MakeScript = Callable[[Server], Script]
Start = Callable[[MakeScript], Awaitable[Server]]


def answering(*responses: bytes) -> MakeScript:
    """Read a request, write the next response, on whichever connection asks."""

    def make(server: Server) -> Script:
        pending = list(responses)

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while pending:
                await server.read_request(reader)
                writer.write(pending.pop(0))
                await writer.drain()
            await reader.read()  # until the client closes

        return script

    return make


def running(script: Script) -> MakeScript:
    return lambda server: script


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    started: list[Server] = []

    async def start(make: MakeScript) -> Server:
        server = Server()
        server.script = make(server)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool()
    yield p
    await p.close()


async def test_a_connection_is_reused_for_the_next_request(pool: Pool, serve: Start) -> None:
    server = await serve(answering(OK, OK))
    for _ in range(2):
        resp = await pool.request(server.url, "POST", "/x?q=1", [("A", "b")], b"body", 5)
        assert (resp.status, await resp.read()) == (200, b"ok")
        resp.release()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nA: b\r\n" in first and b"\r\nContent-Length: 4\r\n" in first
    assert first.endswith(b"\r\n\r\nbody")


async def test_a_released_response_is_freed_without_the_collector(pool: Pool, serve: Start) -> None:
    """The gateway tunes its collector for requests that leave no reference cycles."""
    server = await serve(answering(OK))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        resp = await pool.request(server.url, "GET", "/", [], b"", 5)
        assert await resp.read() == b"ok"
        resp.release()
        del resp
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, upstream.Response)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param((CLOSE, CLOSE), id="connection-close-is-honoured"),
        pytest.param((OK + OK, OK), id="a-second-response-to-one-request"),
    ],
)
async def test_a_connection_that_must_not_be_reused_is_not(
    pool: Pool, serve: Start, answers: tuple[bytes, bytes]
) -> None:
    server = await serve(answering(*answers))
    for _ in range(2):
        resp = await pool.request(server.url, "GET", "/", [], b"", 5)
        assert await resp.read() == b"ok"
        resp.release()
    assert server.connections == 2


async def test_a_response_released_unread_closes_its_connection(pool: Pool, serve: Start) -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    server = await serve(answering(partial, OK))
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    resp.release()
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    assert await resp.read() == b"ok"
    resp.release()
    assert server.connections == 2


async def test_chunked_body_and_headers(pool: Pool, serve: Start) -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Multi: 1\r\nX-Multi: 2\r\n"
        b"X-Utf: caf\xc3\xa9\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    server = await serve(answering(chunked, chunked))
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    assert resp.status == 201 and resp.content_length is None
    assert resp.headers.getall("x-multi") == ["1", "2"]
    assert resp.headers["X-Utf"] == "café"
    assert await resp.read() == b"abcde"
    resp.release()
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    assert b"".join([chunk async for chunk in resp.iter_chunks()]) == b"abcde"
    resp.release()
    assert server.connections == 1


async def test_a_body_framed_by_the_connection_end(pool: Pool, serve: Start) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    server = await serve(running(script))
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    assert resp.content_length is None
    assert await resp.read() == b"until the end"
    resp.release()


async def test_head_ends_at_its_headers(pool: Pool, serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    server = await serve(answering(head, OK))
    resp = await pool.request(server.url, "HEAD", "/", [], b"", 5)
    assert (resp.status, resp.content_length, await resp.read()) == (200, 1000, b"")
    resp.release()
    assert b"Content-Length" not in server.requests[0]


async def test_informational_responses_are_skipped(pool: Pool, serve: Start) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    server = await serve(answering(hints + OK))
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    assert resp.status == 200 and "Link" not in resp.headers
    assert await resp.read() == b"ok"
    resp.release()


def closing_second_request(server: Server) -> Script:
    """Answers the first request, then drops the connection when the next one arrives."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if server.connections == 1:
            writer.write(OK)
            await writer.drain()
            await server.read_request(reader)
            return  # closes without an answer: a keep-alive race, as the pool sees it
        writer.write(OK)
        await writer.drain()
        await reader.read()

    return script


async def test_a_get_is_resent_after_a_keep_alive_race(pool: Pool, serve: Start) -> None:
    server = await serve(closing_second_request)
    for _ in range(2):
        resp = await pool.request(server.url, "GET", "/", [], b"", 5)
        assert await resp.read() == b"ok"
        resp.release()
    assert server.connections == 2 and len(server.requests) == 3


async def test_a_post_is_not_resent_after_a_keep_alive_race(pool: Pool, serve: Start) -> None:
    server = await serve(closing_second_request)
    resp = await pool.request(server.url, "POST", "/", [], b"x", 5)
    assert await resp.read() == b"ok"
    resp.release()
    with pytest.raises(UpstreamError, match="closed the connection before the response"):
        await pool.request(server.url, "POST", "/", [], b"x", 5)
    assert server.connections == 1


async def test_silence_before_the_headers_times_out(pool: Pool, serve: Start) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve(running(script))
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="no response bytes within 0.2s"):
        await pool.request(server.url, "GET", "/", [], b"", 0.2)
    assert 0.15 < time.monotonic() - began < 3


async def body_read(
    pool: Pool, serve: Start, writes: list[bytes], silence: float, *, close: bool
) -> bytes:
    """Read a body the server writes in pieces, 0.15 s apart; then it closes or idles."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in writes:
            writer.write(piece)
            await asyncio.sleep(0.15)
        if not close:
            await reader.read()

    server = await serve(running(script))
    resp = await pool.request(server.url, "GET", "/", [], b"", silence)
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_silence_in_the_body_times_out_slow_bytes_do_not(pool: Pool, serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="no response body bytes within 0.3s"):
        # Each gap is shorter than the timeout; together they are longer.
        await body_read(pool, serve, [head, b"a", b"b", b"c", b"d"], 0.3, close=False)
    assert time.monotonic() - began > 0.6


async def test_a_body_cut_short_is_an_error(pool: Pool, serve: Start) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    with pytest.raises(UpstreamError, match="before the response body ended"):
        await body_read(pool, serve, [head + b"abc"], 5, close=True)


async def test_not_http_is_an_error(pool: Pool, serve: Start) -> None:
    server = await serve(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    with pytest.raises(UpstreamError, match="malformed response"):
        await pool.request(server.url, "GET", "/", [], b"", 5)


async def test_oversized_headers_are_refused(pool: Pool, serve: Start) -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * (upstream.MAX_HEADER_BYTES + 1) + b"\r\n"
    server = await serve(answering(huge + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(UpstreamError, match="headers exceed"):
        await pool.request(server.url, "GET", "/", [], b"", 5)


async def test_a_refused_connection_is_an_error(pool: Pool, serve: Start) -> None:
    server = await serve(answering(OK))
    url = server.url
    await server.stop()
    with pytest.raises(UpstreamError, match="cannot connect to 127.0.0.1"):
        await pool.request(url, "GET", "/", [], b"", 5)


async def test_a_large_body_streams_whole_to_a_slow_reader(pool: Pool, serve: Start) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server = await serve(answering(response, OK))
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)
    received = []
    most = 0
    async for chunk in resp.iter_chunks():
        received.append(chunk)
        most = max(most, len(chunk))
        await asyncio.sleep(0.001)
    resp.release()
    assert b"".join(received) == body
    assert most < len(body)  # it came in pieces, reading paused between them
    resp = await pool.request(server.url, "GET", "/", [], b"", 5)  # and the connection is fine
    assert await resp.read() == b"ok"
    resp.release()
    assert server.connections == 1


async def test_the_pool_limit_queues_requests(serve: Start) -> None:
    pool = Pool(limit=1)
    server = await serve(answering(OK, OK))
    try:
        first = await pool.request(server.url, "GET", "/", [], b"", 5)
        second = asyncio.ensure_future(pool.request(server.url, "GET", "/", [], b"", 5))
        await asyncio.sleep(0.05)
        assert not second.done()
        first_body = await first.read()
        first.release()  # back to the idle list, where the queued request takes it
        resp = await second
        assert (first_body, await resp.read()) == (b"ok", b"ok")
        resp.release()
        assert server.connections == 1
    finally:
        await pool.close()


async def test_waiting_for_room_under_the_limit_is_bounded_by_the_budget(serve: Start) -> None:
    pool = Pool(limit=1)
    server = await serve(answering(OK, OK))
    try:
        held = await pool.request(server.url, "GET", "/", [], b"", 5)  # the only connection
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no free upstream connection within 0.3s"):
            await pool.request(server.url, "GET", "/", [], b"", 0.3)
        assert time.monotonic() - began > 0.25
        assert server.connections == 1 and not pool._queue  # it left the queue
        assert await held.read() == b"ok"
        held.release()
        resp = await pool.request(server.url, "GET", "/", [], b"", 0.3)  # room again
        assert await resp.read() == b"ok"
        resp.release()
        assert server.connections == 1
    finally:
        await pool.close()


async def queued(pool: Pool, waiting: int) -> None:
    """Let requests started just now run up to their wait for room (no I/O before it)."""
    for _ in range(100):
        if len(pool._queue) >= waiting:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(pool._queue)} requests queued, not {waiting}")


async def test_room_handed_to_a_request_that_gives_up_goes_to_the_next(serve: Start) -> None:
    pool = Pool(limit=1)
    server = await serve(answering(OK, OK))
    try:
        held = await pool.request(server.url, "GET", "/", [], b"", 5)
        leaving = asyncio.ensure_future(pool.request(server.url, "GET", "/", [], b"", 5))
        patient = asyncio.ensure_future(pool.request(server.url, "GET", "/", [], b"", 5))
        await queued(pool, 2)
        assert await held.read() == b"ok"
        held.release()  # the room goes to `leaving`, first in the queue...
        leaving.cancel()  # ...which gives up (a timeout alike) before it can take it
        with pytest.raises(asyncio.CancelledError):
            await leaving
        resp = await asyncio.wait_for(patient, 10)  # else it waits its whole budget
        assert await resp.read() == b"ok"
        resp.release()
        assert server.connections == 1
    finally:
        await pool.close()


def test_the_request_head() -> None:
    where = origin("https://user:p%40ss@example.com/api/")
    head = encode_head("GET", where.prefix + "/v1?a=1", where, [("X-A", "1")], 0)
    assert head == (
        b"GET /api/v1?a=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n"
        b"Authorization: Basic dXNlcjpwQHNz\r\n\r\n"
    )
    assert origin("http://[::1]:8080").host_header == "[::1]:8080"
    assert (origin("https://h").port, origin("http://h:80").host_header) == (443, "h")
    post = encode_head("POST", "/", origin("http://h:81"), [], 0)
    assert post == b"POST / HTTP/1.1\r\nHost: h:81\r\nContent-Length: 0\r\n\r\n"


def test_a_line_break_in_a_header_is_refused() -> None:
    with pytest.raises(UpstreamError, match="line break"):
        encode_head("GET", "/", origin("http://h"), [("X-A", "1\r\nX-Evil: 2")], 0)
