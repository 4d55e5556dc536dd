"""Test helpers: free ports, waiting for servers, eventual assertions, processes.

No bare sleeps to synchronise: poll a condition with a deadline instead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

# One copy of the port picker, shared with the benchmark harness.
from bench.processes import free_port as free_port
from bench.processes import free_ports as free_ports

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
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout}s: {last}")


class Proc:
    """A child process with its output captured to a file, stopped on close."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
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


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with session.get(url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()
