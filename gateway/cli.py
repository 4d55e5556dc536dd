"""Command line: argv → config → `app.serve()`; `check` validates a config without starting.

Exit codes scripts can rely on: 0 ok, 1 runtime failure (e.g. a port in use), 2 bad
config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway import __version__, demo, logs
from gateway.errors import ConfigError, StoreUnavailable

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
GIL_SWITCH_INTERVAL = 0.0005
GC_YOUNG_THRESHOLD = 20_000
log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-gateway",
        description="A reverse proxy that makes HTTP endpoints durable.",
    )
    parser.add_argument("--version", action="version", version=f"durable-gateway {__version__}")
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop: uvloop when installed (auto, the default), or asyncio's own",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", help="validate the configuration and exit")
    check.add_argument("--config", "-c", metavar="FILE", dest="check_config")
    sub.add_parser("run", help="run the gateway in the foreground (the default)")
    demo.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args, args.loop)
    config_path = getattr(args, "check_config", None) or args.config
    if not config_path:
        parser.print_usage(sys.stderr)
        print("durable-gateway: error: --config FILE is required", file=sys.stderr)
        return EXIT_CONFIG
    from gateway.config.loader import load_config

    # `check` refuses everything `run` would refuse before starting: the same steps.
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(f"durable-gateway: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        print("durable-gateway: error: --loop uvloop: uvloop is not installed", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{config_path}: ok ({len(config.routes)} routes)")
        return EXIT_OK
    logs.setup(args.log_level, args.log_format)
    from gateway.app import serve

    runner = loop_runner(args.loop)
    _tune_runtime()
    try:
        runner(serve(config))
    except (OSError, StoreUnavailable) as err:
        # A port in use, a store another gateway holds, a directory SQLite may not
        # write: the operator's to fix, so one line, no traceback.
        log.error("cannot start: %s", err)
        return EXIT_FAILURE
    return EXIT_OK


def _tune_runtime() -> None:
    """Interpreter settings for a server under load; each measured in bench/README.md.

    The event loop's thread and SQLite's share the GIL, and a thread that wants it back
    waits up to the switch interval (5 ms by default): on uvloop that stalled about one
    durable request in 100 by 5 ms at concurrency 1; at 0.5 ms the c=1 p99 is 0.5 ms.

    The cyclic garbage collector cost about a sixth of the CPU of a durable request:
    every 700 new containers it scanned the young ones, and from time to time the whole
    heap. What is loaded by now lives as long as the process, so it is frozen out of
    every scan; requests make no reference cycles of their own (RSS stays flat with
    the collector off), so the young generation may grow to 20,000 before a scan.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    log.info(
        "runtime: GIL switch interval %.1f ms, gc thresholds %s, %d objects frozen",
        GIL_SWITCH_INTERVAL * 1000,
        gc.get_threshold(),
        gc.get_freeze_count(),
    )


def loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """`asyncio.run` or `uvloop.run`: uvloop cuts the gateway's CPU per request by about
    a sixth (bench/README.md); the gateway depends on it except on Windows."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            log.info("event loop: uvloop")
            return uvloop.run
    log.info("event loop: asyncio")
    return asyncio.run
