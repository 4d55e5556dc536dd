"""Two builds of the gateway side by side: CPU per request on the same backend, alternating.

A change's cost per request is often a few µs, and this machine's own drift between two
runs of `bench.run` is ±5%. Here both builds run at once behind one backend, each load
is measured on one build then the other (the order swapped every round), the gateways
are pinned to CPU 0 and everything else (backend, load generator) to CPU 1, so they do
not share a core with the load. Each durable figure is also divided by the plain route's
in the same round. Each round starts both gateways afresh: a process's own luck (its
memory layout, its hash seed) is worth several per cent, so it must average out.

    git worktree add --detach /tmp/before <commit>
    (cd /tmp/before && python3 -m venv .venv && .venv/bin/pip install -q -e .)
    python -m bench.compare /tmp/before [--rounds 12] [--duration 3] [--paths /0,/3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.loadgen import Loadgen, Plan, Shot, pick
from bench.processes import HOP_ROUTES, ROOT, Gateway, Lab, drained

CONNECTIONS = 32
PLAIN = "/plain/0"
"""The plain route's 0-step request: the same proxying, nothing durable."""


Series = dict[tuple[str, str], list[float]]
"""CPU µs per request, a figure per round, by build ("this", "other") and path."""


def _pin(cpus: set[int]) -> set[int] | None:
    """`cpus` when this machine has them all (and can pin), else None: not pinned."""
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    return cpus if cpus <= available else None


async def _measure(loadgen: Loadgen, gateway: Gateway, path: str, seconds: float) -> float:
    plan = Plan(gateway.url, (Shot(path),))
    await loadgen.run(plan, CONNECTIONS, 1)  # warm up
    await drained(gateway)
    before = gateway.usage()
    load = await loadgen.run(plan, CONNECTIONS, seconds)
    after = gateway.usage()
    await drained(gateway)  # the next load must not share the CPU with this backlog
    return (after.cpu_seconds - before.cpu_seconds) * 1e6 / max(1, load.requests)


async def compare(other: Path, rounds: int, seconds: float, paths: list[str]) -> str:
    gateway_cpus, rest = _pin({0}), _pin({1})
    if gateway_cpus is not None and rest is not None:
        os.sched_setaffinity(0, rest)  # this process, and the backend and load it starts
    else:
        gateway_cpus = None
    workdir = Path(tempfile.mkdtemp(prefix="durable-compare-"))
    lab = Lab(workdir)
    try:
        backend = await lab.backend()
        routes = HOP_ROUTES.format(upstream=backend.url)
        checkouts = {"this": ROOT, "other": other}
        loadgen = pick(None, workdir)
        every = [*paths, PLAIN]
        series: Series = {(build, path): [] for build in checkouts for path in every}
        for n in range(rounds):
            order = ["this", "other"] if n % 2 == 0 else ["other", "this"]
            # Fresh processes each round: one process's luck (its memory layout, its hash
            # seed) moved a build's figures by up to 10%, for a whole run, against itself.
            builds = {
                build: await lab.gateway(
                    f"{build}-{n}", routes, checkout=checkouts[build], cpus=gateway_cpus
                )
                for build in order
            }
            for path in every:
                for build in order:
                    cpu = await _measure(loadgen, builds[build], path, seconds)
                    series[build, path].append(cpu)
            for gateway in builds.values():
                lab.stop(gateway)
            print(f"round {n + 1}/{rounds} done", file=sys.stderr, flush=True)
        return _report(series, paths, rounds, other, pinned=gateway_cpus is not None)
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _report(series: Series, paths: list[str], rounds: int, other: Path, pinned: bool) -> str:
    lines = [
        f"this build: {ROOT}; other: {other}; {rounds} rounds, c={CONNECTIONS}"
        + ("; gateways on CPU 0, the rest on CPU 1" if pinned else "; not pinned"),
        "",
        "| path | CPU µs/request, this | other | this/other | ÷ plain's this/other |",
        "|---|---:|---:|---:|---:|",
    ]
    plain = _ratios(series, PLAIN)
    for path in [*paths, PLAIN]:
        ratios = _ratios(series, path)
        own = [r / p for r, p in zip(ratios, plain, strict=True)]
        lines.append(
            f"| {path} | {statistics.median(series['this', path]):.1f}"
            f" | {statistics.median(series['other', path]):.1f}"
            f" | {statistics.median(ratios):.3f}"
            f" | {'' if path == PLAIN else f'{statistics.median(own):.3f}'} |"
        )
    lines.append("")
    lines.append("Medians over the rounds; each ratio is taken within a round, then the median.")
    return "\n".join(lines)


def _ratios(series: Series, path: str) -> list[float]:
    """This build's CPU per request over the other's, round by round."""
    this, other = series["this", path], series["other", path]
    return [t / o for t, o in zip(this, other, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("other", type=Path, help="the other build's checkout (its .venv is used)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of each load")
    parser.add_argument("--paths", default="/0", help="durable paths, comma-separated: /0, /3")
    args = parser.parse_args(argv)
    if not (args.other / "gateway").is_dir():
        parser.error(f"{args.other}: not a checkout of the gateway")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration: at least 1")
    paths = [p for p in args.paths.split(",") if p]
    print(asyncio.run(compare(args.other.resolve(), args.rounds, args.duration, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
