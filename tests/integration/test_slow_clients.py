"""A held client that reads slowly never slows its attempt: what it has not read yet is
stored, and it reads it from the store at its own pace; past `max_response`, where
nothing is stored, it is cut off once it falls FOLLOW_LIMIT behind. The run goes on at
the backend's pace either way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.engine.stream import FOLLOW_LIMIT, TAIL_KEEP
from tests.conftest import Backend, Gateway, GatewayFactory, durable_route
from tests.helpers import assert_eventually, until_status

CHUNK = 64 * 1024


def stream_body(chunks: int, size: int = CHUNK) -> bytes:
    """What the example backend's /demo/stream sends (its `stream_chunk`)."""
    lines = (f"chunk {i}" for i in range(1, chunks + 1))
    return b"".join((line + "." * (size - len(line) - 1) + "\n").encode() for line in lines)


async def detached(http: aiohttp.ClientSession, gw: Gateway, reason: str) -> float:
    """durable_clients_detached_total for the route `demo` and `reason`."""
    async with http.get(gw.admin + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "durable_clients_detached_total" and sample.labels == {
                "route": "demo",
                "reason": reason,
            }:
                return sample.value
    return 0.0


async def open_slow(url: str, receive_buffer: int = 4096) -> tuple[socket.socket, bytes]:
    """GET `url` on a raw socket with a small receive buffer (so the gateway's writes back
    up soon); return the socket and the response's head, read byte by byte."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    request = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
        assert byte, f"connection closed in the head: {head!r}"
        head += byte
    return sock, head


def run_id_of(head: bytes) -> str:
    return next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"durable-run-id:")
    )


async def read_to_end(sock: socket.socket) -> bytes:
    """Everything left on the connection, as fast as it comes, until it ends or resets."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while data := await asyncio.wait_for(loop.sock_recv(sock, 65536), 10):
            received += data
    return bytes(received)


@pytest.mark.parametrize("loop", ["auto", "asyncio"])  # the cut resets a loop's transport
async def test_a_client_reading_a_byte_a_second_past_max_response_is_cut_off(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, loop: str
) -> None:
    chunks = 256  # 16 MiB: past the bound plus what the kernel buffers for a socket
    assert chunks * CHUNK > FOLLOW_LIMIT + 4 * 1024 * 1024
    route = durable_route(backend.url, max_response="1MiB")
    gw = gateway_factory(route, args=("--loop", loop))
    url = gw.url(f"/demo/stream?chunks={chunks}&size={CHUNK}&interval_ms=0")
    sock, head = await open_slow(url)
    read = bytearray()

    async def one_byte_a_second() -> None:
        loop = asyncio.get_running_loop()
        while byte := await loop.sock_recv(sock, 1):
            read.extend(byte)
            await asyncio.sleep(1)

    try:
        assert head.startswith(b"HTTP/1.1 200 ")
        run_id = run_id_of(head)
        reader = asyncio.ensure_future(one_byte_a_second())
        # The attempt ends at the backend's pace: the whole body is stored while the
        # client has read a few bytes (it would take the client three months).
        run = await until_status(http, gw, run_id, "succeeded", within=30)
        assert run["response"]["body_kept"] is False  # past max_response
        assert len(read) < 100
        assert not reader.done()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        # The gateway cut the connection: what the client can still read ends short of
        # the whole (chunk-encoded) body, without its last chunk.
        rest = await read_to_end(sock)
    finally:
        sock.close()
    got = bytes(read) + rest
    assert not got.endswith(b"0\r\n\r\n")
    # Reset, not closed: the megabytes the gateway's kernel still held for the client
    # were dropped rather than trickled out to it.
    assert len(got) < FOLLOW_LIMIT
    assert await detached(http, gw, "slow") == 1
    assert "client cut off at byte" in gw.logs() and run_id in gw.logs()


async def test_a_slow_client_within_max_response_reads_the_whole_body_from_the_store(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    chunks = 64  # 4 MiB: more than the gateway keeps in memory once it is stored
    assert chunks * CHUNK > 2 * TAIL_KEEP
    gw = gateway_factory(durable_route(backend.url))
    url = gw.url(f"/demo/stream?chunks={chunks}&size={CHUNK}&interval_ms=0")
    async with http.get(url, read_bufsize=4096) as resp:
        assert resp.status == 200
        # Nothing read yet: the attempt still finishes; the rest is read from the store.
        await until_status(http, gw, resp.headers["Durable-Run-Id"], "succeeded")
        body = bytearray()
        while piece := await resp.content.read(CHUNK // 4):
            body += piece
            await asyncio.sleep(0.005)  # a slow reader, yielding between small reads
    assert bytes(body) == stream_body(chunks)
    assert await detached(http, gw, "slow") == 0


async def test_a_client_that_leaves_mid_stream_is_detached_and_the_run_goes_on(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    chunks = 12  # within max_response: leaving is the only way to be detached
    gw = gateway_factory(durable_route(backend.url))
    sock, head = await open_slow(gw.url(f"/demo/stream?chunks={chunks}&size={CHUNK}"))
    sock.close()  # after the head, while the backend still sends a chunk every 100 ms
    run_id = run_id_of(head)
    run = await until_status(http, gw, run_id, "succeeded")
    assert run["response"]["body_bytes"] == chunks * CHUNK

    async def counted() -> None:
        assert await detached(http, gw, "gone") == 1

    await assert_eventually(counted)
    assert await detached(http, gw, "slow") == 0
    assert "client left at byte" in gw.logs()
