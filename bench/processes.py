"""The processes a benchmark starts on loopback: backend, minimal proxy, nginx, gateways.

Starts, waits for, and stops only its own children (by their pid); never touches
anything else on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent
_T = TypeVar("_T")


def free_ports(count: int) -> list[int]:
    """Distinct ports free on loopback now, for a child process to bind next.

    A port the kernel picks (bind to port 0) is from its ephemeral range, where it may
    hand the same port to another process, or to an outgoing connection, between our
    choice and the child's bind. So ports come from a range below the ephemeral one,
    where the kernel never picks, one process's slice of it: tests running in parallel
    (pytest-xdist workers, each its slice) never choose the same port."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(_PORTS.span):
            if len(sockets) == count:
                return [int(s.getsockname()[1]) for s in sockets]
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", _PORTS.next()))
            except OSError:  # in use (or lingering in TIME_WAIT): take the next
                s.close()
                continue
            sockets.append(s)  # kept bound until all are chosen, so they are distinct
        raise RuntimeError(f"no {count} free ports in {_PORTS.first}-{_PORTS.first + _PORTS.span}")
    finally:
        for s in sockets:
            s.close()


class _PortSlice:
    """This process's ports: a slice of [10000, the kernel's ephemeral range), one per
    pytest-xdist worker, handed out in turn from a random start."""

    LOWEST = 10_000

    def __init__(self) -> None:
        ephemeral = 32_768  # Linux's default lower bound
        with contextlib.suppress(OSError, ValueError, IndexError):
            ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        self.span = max(64, (ephemeral - self.LOWEST) // workers)
        self.first = self.LOWEST + (worker % workers) * self.span
        self._at = random.randrange(self.span)

    def next(self) -> int:
        self._at = (self._at + 1) % self.span
        return self.first + self._at


_PORTS = _PortSlice()


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class Service:
    """A child process serving HTTP at `url`, its output in `log_path`."""

    name: str
    url: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    whole_tree: bool = False
    """Count the process's children too (nginx's workers)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def usage(self) -> procstat.Usage:
        return procstat.sample(procstat.tree(self.pid) if self.whole_tree else [self.pid])

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, nothing flushed; returns once it is gone."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Gateway(Service):
    sidecar: str = ""
    admin: str = ""
    db_path: Path = field(default_factory=Path)


async def wait_ok(url: str, popen: subprocess.Popen[bytes], within: float = 60.0) -> None:
    """Poll GET url until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"process exited with {popen.returncode} before {url} was up")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.05)  # polling a readiness probe, not synchronising a test
    raise TimeoutError(f"{url} not up after {within}s: {last}")


class Lab:
    """Owns a work directory and every process started in it; `close()` stops them all."""

    def __init__(self, workdir: Path, gateway_loop: str = "auto") -> None:
        self.workdir = workdir
        self.gateway_loop = gateway_loop
        """The gateway's `--loop`: auto (uvloop when installed), asyncio or uvloop."""
        self._services: list[Service] = []

    def _spawn(
        self, name: str, args: list[str], cwd: Path = ROOT, cpus: set[int] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start `args` in `cwd`, its output to `<name>.log`; pinned to `cpus` when given
        (from the start, so every thread it makes is pinned too)."""
        log_path = self.workdir / f"{name}.log"
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, preexec_fn=pin
            )
        return popen, log_path

    async def _start(self, service: Service, health: str) -> None:
        self._services.append(service)
        try:
            await wait_ok(service.url + health, service.popen)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{service.name} did not start: {exc}\n{service.output()}") from None

    async def _python(self, module: str, *args: str) -> Service:
        """`python -m bench.<module> --port <free port> *args`, up and healthy."""
        port = free_port()
        argv = [sys.executable, "-m", f"bench.{module}", "--port", str(port), *args]
        popen, log = self._spawn(module, argv)
        service = Service(module, f"http://127.0.0.1:{port}", popen, log)
        await self._start(service, "/_health")
        return service

    async def backend(self) -> Service:
        return await self._python("backend")

    async def proxy(self, upstream: str) -> Service:
        return await self._python("proxy", "--upstream", upstream)

    async def otlp_sink(self) -> Service:
        """A stand-in trace collector (`bench/otlp_sink.py`), at the lowest CPU priority."""
        return await self._python("otlp_sink")

    async def nginx(self, upstream: str) -> Service | None:
        """nginx with one worker (the Python hops get one core too); None if not installed."""
        # Debian puts it in /usr/sbin, which a non-root PATH often lacks.
        exe = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if exe is None:
            return None
        port = free_port()
        prefix = self.workdir / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(prefix, port, upstream))
        popen, log = self._spawn("nginx", [exe, "-p", str(prefix), "-c", str(conf), "-e", "stderr"])
        service = Service("nginx", f"http://127.0.0.1:{port}", popen, log, whole_tree=True)
        await self._start(service, "/_health")
        return service

    async def gateway(
        self,
        name: str,
        routes_yaml: str,
        *,
        durability: str = "async",
        db_path: Path | None = None,
        store_url: str | None = None,
        extra_yaml: str = "",
        checkout: Path = ROOT,
        cpus: set[int] | None = None,
    ) -> Gateway:
        """A gateway on three free ports and its own SQLite file (fresh unless given), or
        on `store_url` (a PostgreSQL database) with `extra_yaml` (its `cluster:`) added.
        `checkout`: another build's directory, run with its own `.venv` when it has one
        (`bench.compare`); `cpus`: the CPUs it is pinned to."""
        ingress, sidecar, admin = free_ports(3)
        db = db_path or self.workdir / f"{name}.db"
        url = store_url or f"sqlite:///{db}"
        config = self.workdir / f"{name}.yaml"
        text = gateway_config(ingress, sidecar, admin, url, durability, routes_yaml, extra_yaml)
        config.write_text(text)
        python = checkout / ".venv" / "bin" / "python"
        exe = str(python) if checkout != ROOT and python.exists() else sys.executable
        args = [exe, "-m", "gateway", "--config", str(config), "--log-level", "warning"]
        args += ["--loop", self.gateway_loop]
        popen, log = self._spawn(name, args, checkout, cpus)
        service = Gateway(
            name,
            f"http://127.0.0.1:{ingress}",
            popen,
            log,
            sidecar=f"http://127.0.0.1:{sidecar}",
            admin=f"http://127.0.0.1:{admin}",
            db_path=db,
        )
        self._services.append(service)
        try:
            await wait_ok(service.admin + "/healthz", popen)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"gateway did not start: {exc}\n{service.output()}") from None
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self._services:
            self._services.remove(service)

    def close(self) -> None:
        for service in reversed(self._services):
            service.stop()
        self._services.clear()


def gateway_config(
    ingress: int,
    sidecar: int,
    admin: int,
    url: str,
    durability: str,
    routes_yaml: str,
    extra_yaml: str = "",
) -> str:
    head = textwrap.dedent(f"""\
        server:
          ingress: 127.0.0.1:{ingress}
          sidecar: 127.0.0.1:{sidecar}
          admin: 127.0.0.1:{admin}
          shutdown_grace: 2s
        storage:
          url: {json.dumps(url)}
          durability: {durability}
        """)
    extra = textwrap.dedent(extra_yaml).strip()
    routes = textwrap.indent(textwrap.dedent(routes_yaml).strip() + "\n", "  ")
    return head + (extra + "\n" if extra else "") + "routes:\n" + routes


def nginx_config(prefix: Path, port: int, upstream: str) -> str:
    host_port = upstream.removeprefix("http://")
    user = "user root;\n" if _is_root() else ""
    tmp = prefix / "tmp"
    return textwrap.dedent(f"""\
        {user}daemon off;
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log stderr warn;
        events {{ worker_connections 4096; }}
        http {{
          access_log off;
          client_body_temp_path {tmp}/body;
          proxy_temp_path {tmp}/proxy;
          fastcgi_temp_path {tmp}/fastcgi;
          uwsgi_temp_path {tmp}/uwsgi;
          scgi_temp_path {tmp}/scgi;
          upstream backend {{
            server {host_port};
            keepalive 64;
          }}
          server {{
            listen 127.0.0.1:{port};
            location / {{
              proxy_pass http://backend;
              proxy_http_version 1.1;
              proxy_set_header Connection "";
            }}
          }}
        }}
        """)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → `{'name{labels}': value}` (labels as the exposition writes them)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


async def poll(
    read: Callable[[], Awaitable[_T]],
    done: Callable[[_T], bool],
    *,
    within: float,
    interval: float,
    failure: Callable[[_T], str],
) -> _T:
    """Read every `interval` s until `done` says yes, and return that reading; after
    `within` s, raise RuntimeError with `failure` of the last one.

    For polling what another process owns (a gauge, a list): not for synchronising tests.
    """
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(failure(value))
        await asyncio.sleep(interval)


HOP_ROUTES = """\
    - name: bench-plain
      match: {{path: /plain/*}}
      upstream: {upstream}
      durable: false
    - name: bench
      match: {{path: /*}}
      upstream: {upstream}
    """
"""The gateway's two bench routes, a plain one at `/plain/*` and a durable one at `/*`;
`.format(upstream=…)` fills in the backend."""


async def drained(gateway: Gateway, within: float = 300.0) -> None:
    """Wait until the gateway's write-behind queue is empty (its backlog is committed)."""
    await poll(
        lambda: scrape(gateway),
        lambda m: m.get("durable_store_queue_depth", 0.0) <= 0,
        within=within,
        interval=0.1,
        failure=lambda _: f"{gateway.name}: store writes still queued after {within} s",
    )


async def scrape(gateway: Gateway) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.admin + "/metrics") as resp:
            return parse_metrics(await resp.text())
