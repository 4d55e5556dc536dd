"""Process figures from /proc: CPU seconds (utime + stime, every thread) and resident memory.

Reads only; never signals or otherwise touches the processes it looks at.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Usage:
    """A snapshot of a set of processes, summed over them."""

    cpu_seconds: float
    rss_bytes: int
    """VmRSS: resident now."""
    peak_rss_bytes: int
    """VmHWM: the most each process was ever resident, summed."""


def parse_stat_cpu(stat_line: str) -> float:
    """utime + stime in seconds from a /proc/PID/stat line.

    The command name (field 2) may hold spaces and parentheses, so fields are counted
    from the last `)`: utime and stime are fields 14 and 15 of the whole line.
    """
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def parse_status_kib(status_text: str, key: str) -> int:
    """A `Key:   123 kB` figure of /proc/PID/status, in bytes; 0 when absent."""
    for line in status_text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def parse_stat_reaped_cpu(stat_line: str) -> float:
    """cutime + cstime in seconds: the CPU of children the process has waited for
    (fields 16 and 17)."""
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    return (int(rest[13]) + int(rest[14])) / _TICK


def cpu_seconds(pid: int) -> float:
    return parse_stat_cpu((_PROC / str(pid) / "stat").read_text())


def tree_cpu_seconds(pid: int) -> float:
    """CPU of pid, its live descendants, and the children it reaped: for a server that
    forks a process per session (PostgreSQL), so a session ending between two samples
    does not take its CPU out of the sum."""
    total = 0.0
    for member in tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue  # gone meanwhile: reaped into its parent's figure
    return total + parse_stat_reaped_cpu((_PROC / str(pid) / "stat").read_text())


def tree(pid: int) -> list[int]:
    """pid and its live descendants (nginx: the master and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def sample(pids: Iterable[int]) -> Usage:
    """Summed CPU and memory of these processes now."""
    cpu, rss, peak = 0.0, 0, 0
    for pid in pids:
        cpu += cpu_seconds(pid)
        status = (_PROC / str(pid) / "status").read_text()
        rss += parse_status_kib(status, "VmRSS")
        peak += parse_status_kib(status, "VmHWM")
    return Usage(cpu, rss, peak)
