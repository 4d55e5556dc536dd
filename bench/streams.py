"""Streamed responses: time to the first byte of an SSE stream (c=1), and a big body's
throughput with the gateway's memory, each through a durable route, a plain route and
straight to the backend.

The client is one blocking HTTP/1.1 socket per target, parsed by httptools, in a worker
thread: cheap enough that the hop, not the client, sets the pace, and it times the first
body byte itself rather than the end of the headers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httptools

from bench.backend import MIB, SSE_EVENTS, sse_body
from bench.loadgen import BODY, percentile
from bench.processes import HOP_ROUTES, Gateway, Lab, Service, drained
from bench.sizes import Sizes

log = logging.getLogger("bench")

MB: Final = 1024 * 1024
GIB: Final = 1024 * MB
SILENCE: Final = 30.0
"""Longest wait for the next bytes of a response before it counts as failed."""
DIRECT: Final = "direct"
DURABLE: Final = "gateway"
PLAIN: Final = "gateway-plain"
PREFIXES: Final = {DIRECT: "", DURABLE: "", PLAIN: "/plain"}
"""Each target's path prefix: the gateway's `durable: false` route is `/plain/*`."""


# --- the client --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its whole response, timed from just before the request was sent."""

    status: int
    first_byte_ns: int
    """Until the first byte of the body (not of the headers); 0 when the body was empty."""
    total_ns: int
    """Until the end of the response."""
    body_bytes: int
    body: bytes
    """Kept only when asked for; else empty."""
    chunked: bool
    content_length: bool
    close: bool
    """The server said `Connection: close`: the next request needs a new connection."""


class _Reader:
    """httptools callbacks for one response: counts the body, notes the first byte."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.first_ns = 0
        self.count = 0
        self.parts: list[bytes] = []
        self.done = False
        self.chunked = self.content_length = self.close = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True
        elif key == b"content-length":
            self.content_length = True
        elif key == b"connection" and value.lower() == b"close":
            self.close = True

    def on_body(self, body: bytes) -> None:
        if not self.first_ns:
            self.first_ns = time.perf_counter_ns()
        self.count += len(body)
        if self.keep:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Client:
    """One keep-alive HTTP/1.1 connection to `base`, reopened when the server closes it.

    Blocking, so run it in a thread; every read waits at most SILENCE seconds and every
    response at most its own deadline.
    """

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.address = (url.hostname or "127.0.0.1", url.port or 80)
        self.host = url.netloc.encode()
        self.sock: socket.socket | None = None
        self.buffer = bytearray(MIB)
        self.view = memoryview(self.buffer)

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=SILENCE)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, path: str, *, keep: bool = False, within: float = SILENCE) -> Exchange:
        """POST the benchmark's small JSON body to `path` and read the whole response."""
        head = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), self.host, len(BODY))
        )
        reader = _Reader(keep)
        parser = httptools.HttpResponseParser(reader)
        sock = self._connect()
        try:
            began = time.perf_counter_ns()
            deadline = time.monotonic() + within
            sock.sendall(head + BODY)
            while not reader.done:
                n = sock.recv_into(self.buffer)
                if n == 0:
                    raise ConnectionError(f"{path}: connection closed mid-response")
                parser.feed_data(self.view[:n])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: response not complete after {within} s")
            ended = time.perf_counter_ns()
        except BaseException:
            self.close()  # whatever is left of that response must not be read as the next
            raise
        if reader.close:
            self.close()
        return Exchange(
            status=parser.get_status_code(),
            first_byte_ns=reader.first_ns - began if reader.first_ns else 0,
            total_ns=ended - began,
            body_bytes=reader.count,
            body=b"".join(reader.parts),
            chunked=reader.chunked,
            content_length=reader.content_length,
            close=reader.close,
        )


# --- time to first byte of an SSE stream ---------------------------------------------------


def _sse_series(base: str, path: str, warmup: int, requests: int) -> dict[str, Any]:
    """`warmup` untimed then `requests` timed sequential requests on one connection.

    A response counts as an error unless it is a 200, streamed chunked without a
    Content-Length, with exactly the events the backend sent.
    """
    expected = sse_body()
    client = Client(base)
    first: list[float] = []
    whole: list[float] = []
    errors = 0
    try:
        for i in range(warmup + requests):
            try:
                got = client.post(path, keep=True)
            except (OSError, httptools.HttpParserError) as exc:
                log.warning("sse %s%s: %s", base, path, exc)
                errors += i >= warmup
                continue
            if i < warmup:
                continue
            if got.status != 200 or got.body != expected or not got.chunked:
                errors += 1
                continue
            first.append(got.first_byte_ns / 1e6)
            whole.append(got.total_ns / 1e6)
    finally:
        client.close()
    first.sort()
    whole.sort()
    return {
        "p50_ms": percentile(first, 50),
        "p90_ms": percentile(first, 90),
        "p99_ms": percentile(first, 99),
        "stream_p50_ms": percentile(whole, 50),
        "requests": len(first),
        "errors": errors,
    }


def _median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds; errors summed, as every one counts."""
    out: dict[str, Any] = {}
    for key in rounds[0]:
        column = [r[key] for r in rounds if r[key] is not None]
        if key == "errors":
            out[key] = sum(column)
        else:
            out[key] = statistics.median(column) if column else None
    return out


async def sse_ttfb(lab: Lab, backend: Service, sizes: Sizes) -> dict[str, Any]:
    """Sequential SSE requests through each target, targets interleaved within a round."""
    gateway = await lab.gateway("sse", HOP_ROUTES.format(upstream=backend.url))
    bases = {DIRECT: backend.url, DURABLE: gateway.url, PLAIN: gateway.url}
    query = f"/sse?gap_ms={sizes.sse_gap_ms:g}"
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in bases}
    try:
        for r in range(sizes.rounds):
            for name, base in bases.items():
                log.info("round %d/%d: SSE time to first byte via %s", r + 1, sizes.rounds, name)
                path = PREFIXES[name] + query
                figures = await asyncio.to_thread(
                    _sse_series, base, path, sizes.sse_warmup, sizes.sse_requests
                )
                if not figures["requests"]:
                    raise RuntimeError(f"sse via {name}: no stream came back whole")
                rounds[name].append(figures)
    finally:
        lab.stop(gateway)
    targets = {name: {**_median_rounds(runs), "rounds": runs} for name, runs in rounds.items()}
    direct = targets[DIRECT]["p50_ms"]
    for name, figures in targets.items():
        figures["added_p50_ms"] = None if name == DIRECT else figures["p50_ms"] - direct
    return {
        "events": SSE_EVENTS,
        "gap_ms": sizes.sse_gap_ms,
        "targets": targets,
    }


# --- a big body --------------------------------------------------------------------------


def _transfer(base: str, path: str, size: int) -> Exchange:
    """One big response, read and dropped as fast as it comes; its size is checked."""
    client = Client(base)
    try:
        got = client.post(path, within=60 + size / MB)  # at 1 MiB/s it is broken anyway
    finally:
        client.close()
    if got.status != 200 or got.body_bytes != size:
        raise RuntimeError(f"{path}: status {got.status}, {got.body_bytes} of {size} bytes")
    return got


async def _stored(gateway: Gateway, within: float) -> bool:
    """Whether the gateway's write queue empties within `within` s: a durable body is
    written after the client has it, and the memory that takes counts too."""
    try:
        await drained(gateway, within)
    except RuntimeError as exc:
        log.warning("%s", exc)
        return False
    return True


async def _through_gateway(
    lab: Lab, backend: Service, name: str, mib: int, label: str
) -> dict[str, Any]:
    """A fresh gateway per transfer, so its peak RSS (VmHWM) is this transfer's alone."""
    gateway = await lab.gateway(label, HOP_ROUTES.format(upstream=backend.url))
    try:
        prefix = PREFIXES[name]
        # Warm: one small body through the same route, so the idle baseline has the
        # route's code paths and buffers in it, then wait until that run is written.
        await asyncio.to_thread(_transfer, gateway.url, f"{prefix}/big?mib=1", MIB)
        await _stored(gateway, 30)
        idle = gateway.usage()
        got = await asyncio.to_thread(_transfer, gateway.url, f"{prefix}/big?mib={mib}", mib * MIB)
        stored = await _stored(gateway, 10 + mib / 20)
        after = gateway.usage()
    finally:
        lab.stop(gateway)
    seconds = got.total_ns / 1e9
    return {
        "seconds": seconds,
        "mib_per_s": mib / seconds,
        "first_byte_ms": got.first_byte_ns / 1e6,
        "gateway_cpu_s_per_gib": (after.cpu_seconds - idle.cpu_seconds) * GIB / (mib * MIB),
        "idle_rss_mb": idle.rss_bytes / MB,
        "peak_rss_mb": after.peak_rss_bytes / MB,
        "rss_growth_mb": (after.peak_rss_bytes - idle.rss_bytes) / MB,
        "stored": stored if name == DURABLE else None,
        "chunked": got.chunked,
    }


async def _direct(backend: Service, mib: int) -> dict[str, Any]:
    got = await asyncio.to_thread(_transfer, backend.url, f"/big?mib={mib}", mib * MIB)
    seconds = got.total_ns / 1e9
    return {
        "seconds": seconds,
        "mib_per_s": mib / seconds,
        "first_byte_ms": got.first_byte_ns / 1e6,
        "gateway_cpu_s_per_gib": None,
        "idle_rss_mb": None,
        "peak_rss_mb": None,
        "rss_growth_mb": None,
        "stored": None,
        "chunked": got.chunked,
    }


async def big_body(lab: Lab, backend: Service, sizes: Sizes) -> dict[str, Any]:
    """`big_body_mib` MiB straight, through a plain route and through a durable route,
    interleaved within each round; a failed transfer stops the section."""
    mib = sizes.big_body_mib
    rounds: dict[str, list[dict[str, Any]]] = {DIRECT: [], PLAIN: [], DURABLE: []}
    for r in range(sizes.rounds):
        for name in rounds:
            log.info("round %d/%d: %d MiB body via %s", r + 1, sizes.rounds, mib, name)
            if name == DIRECT:
                figures = await _direct(backend, mib)
            else:
                figures = await _through_gateway(lab, backend, name, mib, f"big-{name}-{r}")
            rounds[name].append(figures)
    targets = {name: {**_median_rounds(runs), "rounds": runs} for name, runs in rounds.items()}
    for name, figures in targets.items():
        figures["chunked"] = all(r["chunked"] for r in figures["rounds"])
        if name == DURABLE:
            figures["stored"] = all(r["stored"] for r in figures["rounds"])
    plain, durable = targets[PLAIN]["mib_per_s"], targets[DURABLE]["mib_per_s"]
    return {"mib": mib, "durable_to_plain": durable / plain, "targets": targets}
