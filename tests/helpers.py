"""Test helpers: free ports, waiting for servers, eventual assertions, processes, and
the client's side of a run through a real gateway (integration tests).

No bare sleeps to synchronise: poll a condition with a deadline instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

# One copy of the port picker, shared with the benchmark harness.
from bench.processes import free_port as free_port
from bench.processes import free_ports as free_ports

if TYPE_CHECKING:  # conftest.py imports this module
    from tests.conftest import Backend, Gateway

ROOT = Path(__file__).resolve().parent.parent


async def assert_eventually(
    check: Callable[[], Awaitable[Any]], within: float = 15.0, interval: float = 0.02
) -> Any:
    """Retry an async check until it stops raising AssertionError (or the deadline)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


def wait_http_ok(
    url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until GET url answers 200 (synchronous: used while starting processes)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last = ""
    parts = urlsplit(url)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:  # a refused connect first, on a socket closed here: urllib's would leak
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=1):
                pass
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)  # not the exception: its traceback would keep the socket
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout}s: {last}")


class Proc:
    """A child process with its output captured to a file, stopped on close."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        new_session: bool = False,
    ):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,  # a process group of its own, as a terminal's
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            if sig is None:
                self.popen.terminate()
            else:
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def python() -> str:
    return sys.executable


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` to its end: its exit code, stdout and stderr."""
    return subprocess.run(
        [python(), "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with session.get(url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


# --- a run through a real gateway ----------------------------------------------------


async def accept(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[str, str]:
    """POST with `Prefer: respond-async`: the run's id and its result URL, which is
    durable once answered."""
    async with http.post(url, headers={"Prefer": "respond-async", **(headers or {})}) as resp:
        assert resp.status == 202, await resp.text()
        return resp.headers["Durable-Run-Id"], resp.headers["Location"]


async def final(
    http: aiohttp.ClientSession,
    location: str,
    *,
    within: float = 30.0,
    wait: int = 5,
    expect: int | None = None,
) -> tuple[int, Any]:
    """Long-poll a result URL (`Prefer: wait`) until the run's final answer: its status
    and JSON body. With `expect`, until it answers that status (say 200 across a restart)."""

    async def answered() -> tuple[int, Any]:
        async with http.get(location, headers={"Prefer": f"wait={wait}"}) as resp:
            if expect is None:
                assert resp.status != 202, "still running"
            else:
                assert resp.status == expect, f"{resp.status} {await resp.text()}"
            return resp.status, await resp.json()

    result: tuple[int, Any] = await assert_eventually(answered, within=within)
    return result


async def counts(http: aiohttp.ClientSession, backend: Backend, run_id: str) -> dict[str, int]:
    """How many times the example backend ran each step of one run."""
    async with http.get(f"{backend.url}/_counts?run_id={run_id}") as resp:
        result: dict[str, int] = (await resp.json())["counts"]
        return result


async def all_counts(http: aiohttp.ClientSession, backend: Backend) -> dict[str, dict[str, int]]:
    """The same for every run the example backend has seen: run id → step → runs."""
    async with http.get(backend.url + "/_counts") as resp:
        result: dict[str, dict[str, int]] = await resp.json()
        return result


async def run_status(http: aiohttp.ClientSession, gw: Gateway, run_id: str) -> dict[str, Any]:
    """The run as the admin API shows it."""
    detail: dict[str, Any] = await get_json(http, f"{gw.admin}/v1/runs/{run_id}")
    return detail


async def until_status(
    http: aiohttp.ClientSession, gw: Gateway, run_id: str, status: str, within: float = 15.0
) -> dict[str, Any]:
    """Poll the admin API until the run has `status`; the run as it shows it then."""

    async def reached() -> dict[str, Any]:
        detail = await run_status(http, gw, run_id)
        assert detail["status"] == status, detail["status"]
        return detail

    result: dict[str, Any] = await assert_eventually(reached, within=within)
    return result


async def post_event(http: aiohttp.ClientSession, gw: Gateway, **event: Any) -> dict[str, Any]:
    """POST /v1/events on the admin listener; its JSON answer."""
    async with http.post(f"{gw.admin}/v1/events", json=event) as resp:
        assert resp.status in (200, 202), await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def send_head(
    url: str, method: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Open a connection and send a request's head only (its body is the caller's to send);
    return the streams and the first response head that comes back before the body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


async def send_after_continue(
    url: str, method: str, headers: dict[str, str], body: bytes
) -> tuple[bytes, bytes]:
    """Send a request with `Expect: 100-continue`, its body only after the `100 Continue`
    (asserted); return the final response's head and its body (framed by Content-Length)."""
    ask = {**headers, "Expect": "100-continue", "Content-Length": str(len(body))}
    reader, writer, head = await send_head(url, method, ask)
    try:
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            int(line.split(b":", 1)[1])
            for line in final.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return final, await reader.readexactly(length)
    finally:
        writer.close()
