"""Sampling profile of the gateway under load with py-spy (optional): where its CPU goes.

Attaches to the gateway's pid only, while a separate load runs: never during a measured
load, whose figures the sampling would disturb.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]+?)(?::(?P<line>\d+))?\)$")
OWN_CODE = ("gateway/", "step_protocol/")
"""Files of this project: their inclusive shares say which of its functions cost most."""
ENTRY = ("gateway/__main__.py", "gateway/cli.py")
"""Under every sample of the event loop's thread: their share says nothing."""


def _frame(frame: str, *, line: bool) -> tuple[str, str]:
    """`func (path/to/module.py:12)` → (`func (to/module.py[:12])`, file as py-spy gave it)."""
    m = _FRAME.match(frame)
    if m is None:
        return frame, ""
    short = "/".join(m["file"].split("/")[-2:])
    where = f"{short}:{m['line']}" if line and m["line"] else short
    return f"{m['func']} ({where})", m["file"]


def top_functions(collapsed: str, limit: int = 15) -> dict[str, Any]:
    """Shares of all samples (every thread) from py-spy's raw (collapsed) output.

    `self`: the innermost frame, with its line (a C call such as SQLite's shows as the
    Python line that made it). `own_inclusive`: time under each function of this project.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for text in collapsed.splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_frame(frames[-1], line=True)[0]] += count
        seen = set()
        for frame in frames:
            name, file = _frame(frame, line=False)
            if file.endswith(ENTRY):
                continue
            if file.startswith(OWN_CODE) or any(f"/{p}" in file for p in OWN_CODE):
                seen.add(name)
        for name in seen:
            inclusive[name] += count

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "share": n / total if total else 0.0}
            for name, n in counter.most_common(limit)
        ]

    return {"samples": total, "self": rows(own), "own_inclusive": rows(inclusive)}


def available() -> bool:
    return shutil.which("py-spy") is not None


async def record(pid: int, seconds: float, out: Path) -> str:
    """Sample `pid` for `seconds`; the collapsed stacks (also written to `out`)."""
    proc = await asyncio.create_subprocess_exec(
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        text, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {text.decode(errors='replace')}")
    return await asyncio.to_thread(out.read_text)
