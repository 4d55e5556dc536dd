"""The one benchmark command: starts everything on loopback, measures each section in
turn, prints a Markdown table and writes it with the JSON.

    python -m bench.run [--quick] [--duration S] [--rounds N] [--out FILE.json]
                        [--only latency,throughput,store,postgres,scale,memory,sse_ttfb,
                                big_body,tracing]
                        [--loadgen wrk|python] [--big-body-mib N]

Never runs two loads at once, and stops every process it started, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from bench import checkpoints, hops, memory, postgres, profile, report, scale, streams, tracing
from bench.hops import Hop
from bench.loadgen import Loadgen, LoadgenName, Plan, Shot, pick
from bench.processes import HOP_ROUTES, ROOT, Lab, Service
from bench.sizes import Sizes, choose

SECTIONS = (
    "latency",
    "throughput",
    "store",
    "postgres",
    "scale",
    "memory",
    "sse_ttfb",
    "big_body",
    "tracing",
)
log = logging.getLogger("bench")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes: proves it runs, in ~1 min")
    p.add_argument("--duration", type=float, help="seconds of each c=32 load (default 10)")
    p.add_argument("--rounds", type=int, help="medians of this many rounds (default 3)")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/DATE.json)")
    p.add_argument("--only", help=f"comma-separated sections of: {','.join(SECTIONS)}")
    p.add_argument("--loadgen", choices=["wrk", "python"], help="default: wrk if on PATH")
    p.add_argument("--no-nginx", action="store_true", help="leave nginx out even if installed")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway under 3-step load")
    p.add_argument(
        "--gateway-loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="the gateway's --loop (default auto: uvloop when installed)",
    )
    p.add_argument(
        "--big-body-mib",
        type=int,
        help="MiB of the big_body section's response (default 1024; quick: 16)",
    )
    p.add_argument("--workdir", type=Path, help="keep configs, logs and stores here")
    return p


def _version(*args: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.returncode == 0 else ""


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


def _gateway_loop(choice: str) -> str:
    if choice != "auto":
        return choice
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def meta(sizes: Sizes, loadgen: Loadgen, quick: bool, gateway_loop: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "commit": _version("git", "rev-parse", "--short", "HEAD"),
        "loadgen": loadgen.name,
        # The gateway runs on uvloop when it is installed (`--loop auto`); the proxy
        # and the backend always on asyncio's own loop.
        "gateway_loop": _gateway_loop(gateway_loop),
        "wrk": _version("wrk", "--version") if loadgen.name == "wrk" else "",
        "nginx": _version("nginx", "-v") if shutil.which("nginx") else "",
        "quick": quick,
        "rounds": sizes.rounds,
        "latency_s": sizes.latency,
        "throughput_s": sizes.throughput,
        "connections": sizes.connections,
        "sizes": asdict(sizes),
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> str:
    """Other work on the machine skews every figure: recorded at start and end."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


async def _hop_targets(lab: Lab, backend: Service, nginx: bool) -> list[Hop]:
    """direct, proxy, nginx (when installed), gateway (durable), gateway (durable: false)."""
    found = [Hop("direct", backend.url)]
    proxy = await lab.proxy(backend.url)
    found.append(Hop("proxy", proxy.url, service=proxy))
    server = await lab.nginx(backend.url) if nginx else None
    if server is not None:
        found.append(Hop("nginx", server.url, service=server))
    gateway = await lab.gateway("gateway", HOP_ROUTES.format(upstream=backend.url))
    found.append(Hop("gateway", gateway.url, service=gateway))
    found.append(Hop("gateway-plain", gateway.url, prefix="/plain", service=gateway))
    return found


async def _profile(lab: Lab, loadgen: Loadgen, gateway: Hop, sizes: Sizes, out: Path) -> Any:
    """A separate 3-step load at c=32 with py-spy sampling the gateway."""
    assert gateway.service is not None
    collapsed = lab.workdir / "gateway-3step.collapsed.txt"
    plan = Plan(gateway.base, (Shot("/3"),))
    recording = asyncio.ensure_future(
        profile.record(gateway.service.pid, sizes.throughput, collapsed)
    )
    await loadgen.run(plan, sizes.connections, sizes.throughput + 1)
    text = await recording
    keep = out.with_name(out.stem + "-gateway-3step.collapsed.txt")
    keep.write_text(text)
    return {**profile.top_functions(text), "collapsed_stacks": keep.name}


async def run(args: argparse.Namespace) -> int:
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"--only: unknown sections {sorted(unknown)}", file=sys.stderr)
        return 2
    if args.big_body_mib is not None and args.big_body_mib < 1:
        print("--big-body-mib: at least 1", file=sys.stderr)
        return 2
    sizes = choose(args.quick, args.duration, args.rounds, args.big_body_mib)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    out: Path = args.out or ROOT / "bench" / "results" / f"{stamp}.json"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="durable-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    loadgen_name: LoadgenName | None = args.loadgen
    loadgen = pick(loadgen_name, workdir)
    results: dict[str, Any] = {"meta": meta(sizes, loadgen, args.quick, args.gateway_loop)}
    lab = Lab(workdir, args.gateway_loop)
    log.info("work dir %s, load generator %s", workdir, loadgen.name)
    try:
        backend = await lab.backend()
        if only & {"latency", "throughput"}:
            targets = await _hop_targets(lab, backend, nginx=not args.no_nginx)
            results["hops"] = await hops.measure(
                loadgen,
                targets,
                backend,
                sizes,
                latency="latency" in only,
                throughput="throughput" in only,
            )
            if args.profile and profile.available():
                gateway = next(t for t in targets if t.name == "gateway")
                out.parent.mkdir(parents=True, exist_ok=True)
                results["profile"] = await _profile(lab, loadgen, gateway, sizes, out)
            for target in targets:
                if target.service is not None:
                    lab.stop(target.service)
        if "store" in only:
            results["store"] = await checkpoints.measure(lab, backend, loadgen, sizes)
        if "postgres" in only:
            results["postgres"] = await postgres.measure(lab, backend, loadgen, sizes)
        if "scale" in only:
            results["scale"] = await scale.measure(lab, backend, loadgen, sizes)
        if "memory" in only:
            results["memory"] = await memory.measure(lab, backend, sizes)
        if "sse_ttfb" in only:
            results["sse_ttfb"] = await streams.sse_ttfb(lab, backend, sizes)
        if "big_body" in only:
            results["big_body"] = await streams.big_body(lab, backend, sizes)
        if "tracing" in only:
            results["tracing"] = await tracing.measure(lab, backend, loadgen, sizes)
    finally:
        lab.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["loadavg_at_end"] = _loadavg()
    print(report.finish(results, out))
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


async def _stoppable(args: argparse.Namespace) -> int:
    """run(), cancelled by SIGINT or SIGTERM, so its `finally` stops every child process."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await run(args)
    except asyncio.CancelledError:
        print("bench: stopped; every process it started is stopped too", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr
    )
    return asyncio.run(_stoppable(args))


if __name__ == "__main__":
    sys.exit(main())
