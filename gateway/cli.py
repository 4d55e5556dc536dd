"""Command line: argv → config → `app.serve()`; `check` validates a config without starting;
`reload` validates one and asks the gateway running on it to reload it.

Exit codes scripts can rely on: 0 ok, 1 runtime failure (e.g. a port in use, a gateway
that cannot be reached), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway import __version__, demo, logs
from gateway.config import GatewayConfig, local_url
from gateway.errors import ConfigError, StoreUnavailable

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
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
    reload = sub.add_parser(
        "reload",
        help="validate the configuration, then have the gateway running on it reload it",
    )
    reload.add_argument("--config", "-c", metavar="FILE", dest="reload_config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the event loop took SIGINT over: no traceback
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args, args.loop)
    config_path = (
        getattr(args, "check_config", None) or getattr(args, "reload_config", None) or args.config
    )
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
    if args.command == "reload":
        return ask_reload(config)
    logs.setup(args.log_level, args.log_format)
    # A SIGHUP from now on asks for a reload, not the end: noted until the loop takes it.
    hangup = asyncio.Event()
    signal.signal(signal.SIGHUP, lambda _sig, _frame: hangup.set())
    from gateway.app import serve

    runner = loop_runner(args.loop)
    _tune_runtime()
    try:
        runner(serve(config, hangup=hangup))
    except (OSError, StoreUnavailable) as err:
        # A port in use, a store another gateway holds, a directory SQLite may not
        # write: the operator's to fix, so one line, no traceback.
        log.error("cannot start: %s", err)
        return EXIT_FAILURE
    return EXIT_OK


RELOAD_TIMEOUT = 30.0
"""Seconds `reload` waits for the gateway's answer (a reload reads one small file)."""


def ask_reload(config: GatewayConfig) -> int:
    """`POST /v1/admin/reload` on the admin listener `config` names, with its admin token.

    The gateway reads its own file again (with its own environment): it is the one it
    started with, which this command has just validated here.
    """
    url = local_url(config.server.admin) + "/v1/admin/reload"
    token = config.security.admin_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=b"", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=RELOAD_TIMEOUT) as resp:
            summary = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            detail = _problem_detail(err.read()) or err.reason
        if err.code == 422:
            print(f"durable-gateway: the gateway kept its configuration: {detail}", file=sys.stderr)
            return EXIT_CONFIG
        hint = ""
        if err.code == 401:  # the file's token is not the one in force
            hint = " (if security.admin_token changed, reload with SIGHUP instead)"
        print(
            f"durable-gateway: reload refused by {url}: {err.code} {detail}{hint}", file=sys.stderr
        )
        return EXIT_FAILURE
    except (urllib.error.URLError, OSError) as err:
        why = getattr(err, "reason", None) or err
        print(f"durable-gateway: cannot reach the gateway at {url}: {why}", file=sys.stderr)
        return EXIT_FAILURE
    routes = summary["routes"]
    print(
        f"{summary['source']}: reloaded (routes: {len(routes['added'])} added,"
        f" {len(routes['removed'])} removed, {len(routes['changed'])} changed)"
    )
    if summary["needs_restart"]:
        kept = ", ".join(summary["needs_restart"])
        print(f"kept as started until a restart: {kept}")
    return EXIT_OK


def _problem_detail(body: bytes) -> str:
    """The `detail` of a problem+json body, or nothing."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else ""


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
