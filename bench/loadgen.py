"""Load generators: `wrk` driven by a generated Lua script, and a pure-Python fallback.

Both take the same `Plan` and give the same `LoadResult`. Only ever aims at the
loopback servers the harness started; never two loads at once (the caller's rule).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import aiohttp
import orjson

BODY: Final = b'{"user":"bench","prompt":"say hello","max_tokens":16}'
"""The small JSON body every benchmark POST sends."""

MARKER: Final = "BENCH_JSON "
"""Prefix of the line the Lua `done()` hook prints; the rest of the line is JSON."""

LoadgenName = Literal["wrk", "python"]


@dataclass(frozen=True, slots=True)
class Shot:
    """One request shape: a path (with query) and its own headers."""

    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """What a load sends: shots taken round-robin, all to one base URL."""

    base: str
    """`http://127.0.0.1:PORT`, no trailing slash."""
    shots: tuple[Shot, ...]
    method: str = "POST"
    body: bytes = BODY
    unique: bool = False
    """Append `-L-T-N` to each path (L: this load, T: wrk thread, N: count), so every
    request of every load (warm-ups too) writes a step id never written before."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    """Responses received, whatever their status."""
    errors: int
    """Socket errors, timeouts and statuses >= 400 (wrk's definition)."""
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class Loadgen(Protocol):
    name: LoadgenName

    async def run(self, plan: Plan, connections: int, duration: float) -> LoadResult:
        """Keep `connections` requests in flight for `duration` seconds."""


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; 0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(latencies_ns: list[int], errors: int, seconds: float) -> LoadResult:
    ordered = sorted(v / 1e6 for v in latencies_ns)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    return LoadResult(
        requests=len(ordered),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(ordered, 50),
        p90_ms=percentile(ordered, 90),
        p99_ms=percentile(ordered, 99),
        mean_ms=mean,
        max_ms=ordered[-1] if ordered else 0.0,
    )


# --- wrk -----------------------------------------------------------------------------


def _lua_str(text: str | bytes) -> str:
    """A Lua string literal. Escapes are 3 decimal digits: `\\34` before a digit would
    read as a longer number."""
    raw = text.encode() if isinstance(text, str) else text
    safe = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}" for b in raw)
    return f'"{safe}"'


def _lua_headers(headers: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers) + "}"


_DONE: Final = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%.0f,"duration_us":%.0f,"errors":%.0f,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,"max_us":%.0f}\n',
    MARKER, summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""

_ROTATE: Final = r"""
local n = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  n = n + 1
  local shot = shots[(n % #shots) + 1]
  local path = shot[1]
  if unique then path = path .. "-" .. load_id .. "-" .. tostring(tid) .. "-" .. tostring(n) end
  return wrk.format(method, path, shot[2], body)
end
"""


_LOADS = itertools.count(1)


def next_load_id() -> str:
    """Tells one load's unique paths from another's, within this process and across runs."""
    return f"{os.getpid()}.{time.time_ns() % 10**9}.{next(_LOADS)}"


def lua_script(plan: Plan, load_id: str = "1") -> str:
    """The wrk script for a plan: static when one shot repeats, else a `request()` hook."""
    common = [("Content-Type", "application/json")]
    lines = [f"MARKER = {_lua_str(MARKER)}"]
    if len(plan.shots) == 1 and not plan.unique:
        shot = plan.shots[0]
        lines += [
            f"wrk.method = {_lua_str(plan.method)}",
            f"wrk.path = {_lua_str(shot.path)}",
            f"wrk.body = {_lua_str(plan.body)}",
            f"wrk.headers = {_lua_headers([*common, *shot.headers])}",
        ]
    else:
        shots = ",\n  ".join(
            f"{{{_lua_str(s.path)}, {_lua_headers([*common, *s.headers])}}}" for s in plan.shots
        )
        lines += [
            f"shots = {{\n  {shots}\n}}",
            f"unique = {'true' if plan.unique else 'false'}",
            f"load_id = {_lua_str(load_id)}",
            f"method = {_lua_str(plan.method)}",
            f"body = {_lua_str(plan.body)}",
            _ROTATE,
        ]
    return "\n".join(lines) + "\n" + _DONE


def parse_wrk(stdout: str) -> LoadResult:
    """The LoadResult in the marker line of wrk's output."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data = orjson.loads(line[len(MARKER) :])
            return LoadResult(
                requests=int(data["requests"]),
                errors=int(data["errors"]),
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                mean_ms=data["mean_us"] / 1000,
                max_ms=data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no {MARKER.strip()} line:\n{stdout}")


class Wrk:
    """Debian's `wrk` (C, epoll), one thread: it needs far less CPU than the servers."""

    name: LoadgenName = "wrk"

    def __init__(self, scratch: Path, executable: str = "wrk") -> None:
        self._scratch = scratch
        self._exe = executable
        self._scripts = itertools.count()

    async def run(self, plan: Plan, connections: int, duration: float) -> LoadResult:
        script = self._scratch / f"load-{next(self._scripts)}.lua"
        script.write_text(lua_script(plan, next_load_id()))
        seconds = max(1, round(duration))  # wrk takes whole seconds
        proc = await asyncio.create_subprocess_exec(
            self._exe,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            plan.base + plan.shots[0].path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()  # the harness is stopping: no load may outlive it
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
        return parse_wrk(text)


# --- pure Python -----------------------------------------------------------------------


class PythonLoad:
    """asyncio + aiohttp, one process: the fallback where `wrk` is not installed.

    It spends more CPU per request than wrk, so its figures are lower bounds; the
    ratios between targets, measured with the same client, stay comparable.
    """

    name: LoadgenName = "python"

    async def run(self, plan: Plan, connections: int, duration: float) -> LoadResult:
        latencies: list[int] = []
        errors = 0
        counter = itertools.count()
        load_id = next_load_id()
        headers = [
            {"Content-Type": "application/json", **dict(shot.headers)} for shot in plan.shots
        ]
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + duration

            async def worker() -> None:
                nonlocal errors
                while loop.time() < deadline:
                    n = next(counter)
                    index = n % len(plan.shots)
                    path = plan.shots[index].path + (f"-{load_id}-1-{n}" if plan.unique else "")
                    began = time.perf_counter_ns()
                    try:
                        async with session.request(
                            plan.method, plan.base + path, data=plan.body, headers=headers[index]
                        ) as resp:
                            await resp.read()
                            errors += resp.status >= 400
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        errors += 1
                        continue
                    latencies.append(time.perf_counter_ns() - began)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            seconds = time.perf_counter() - began
        return summarize(latencies, errors, seconds)


def pick(name: LoadgenName | None, scratch: Path) -> Loadgen:
    """`wrk` when asked for or, with no choice made, when it is on PATH; else Python."""
    if name == "python":
        return PythonLoad()
    exe = shutil.which("wrk")
    if exe is None:
        if name == "wrk":
            raise SystemExit("--loadgen wrk: wrk is not on PATH (apt-get install wrk)")
        return PythonLoad()
    return Wrk(scratch, exe)


async def fire(
    url: str,
    count: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
    body: bytes = BODY,
) -> dict[int, int]:
    """Send exactly `count` POSTs, `concurrency` at a time; how many got each status."""
    statuses: dict[int, int] = {}
    todo = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for _ in todo:
                async with session.post(url, data=body, headers=sent) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses
