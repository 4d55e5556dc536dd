"""Shared fixtures: real backends (Python and Node) and a real gateway process per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests import postgres
from tests.helpers import ROOT, Proc, free_port, free_ports, python, wait_http_ok
from tests.otlp import otlp as otlp  # the OTLP receiver fixture, for every test


@dataclass
class Backend:
    url: str
    proc: Proc


def start_backend(kind: str, tmp_path: Path, *extra: str) -> Backend:
    port = free_port()
    if kind == "python":
        args = [python(), str(ROOT / "examples" / "backend.py"), "--port", str(port), *extra]
    else:
        node = shutil.which("node")
        if node is None:
            pytest.skip("node is not installed")
        args = [node, str(ROOT / "examples" / "node_backend.mjs"), "--port", str(port), *extra]
    proc = Proc(args, tmp_path / f"backend-{kind}-{port}.log")
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/_health", proc=proc.popen)
    except BaseException:
        proc.stop()
        raise
    return Backend(f"http://127.0.0.1:{port}", proc)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    b = start_backend("python", tmp_path)
    yield b
    b.proc.stop()


@pytest.fixture
def sync_backend(tmp_path: Path) -> Iterator[Backend]:
    """The example backend writing every step with `?durable=sync`."""
    b = start_backend("python", tmp_path, "--steps-sync")
    yield b
    b.proc.stop()


@dataclass
class Gateway:
    ingress: str
    sidecar: str
    admin: str
    config_path: Path
    db_path: Path
    env: dict[str, str] | None = None
    args: tuple[str, ...] = ()
    """Extra command-line arguments, after `--config FILE`."""
    starts: int = 1
    proc: Proc = field(init=False)

    def url(self, path: str) -> str:
        return self.ingress + path

    def launch(self) -> None:
        """Start the gateway process on this config and wait for it to be healthy."""
        self.spawn()
        self.wait_healthy()

    def spawn(self) -> None:
        """Start the gateway process on this config; `wait_healthy` waits for it."""
        log = self.config_path.with_suffix(f".{self.starts}.log")
        self.proc = Proc(
            [
                *(python(), "-m", "gateway", "--config", str(self.config_path)),
                *("--log-level", "debug", *self.args),
            ],
            log,
            env=self.env,
        )

    def wait_healthy(self) -> None:
        try:
            wait_http_ok(self.admin + "/healthz", proc=self.proc.popen)
        except (RuntimeError, TimeoutError) as exc:
            output = self.proc.output()
            self.proc.stop()
            raise RuntimeError(f"{exc}\n{output}") from None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        self.proc.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same config, ports and store."""
        self.proc.stop()
        self.starts += 1
        self.launch()

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in sorted(self.config_path.parent.glob(self.config_path.stem + ".*.log"))
        )


GatewayFactory = Callable[..., Gateway]


STORES = ("sqlite", "postgres")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one and a half workers per usable core, at most 8. Most of a test's
    time is spent waiting on the gateway and backend processes it started, so two cores
    keep three workers busy (the suite took 6.4 min there against 15 with one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, max(1, (cores or 1) * 3 // 2))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test (or module) marked `both_stores` runs once per store: every gateway it starts
    without `url=` is on SQLite, then on PostgreSQL (test ids `[sqlite]`, `[postgres]`)."""
    if metafunc.definition.get_closest_marker("both_stores") is None:
        return
    if "gateway_store" in metafunc.fixturenames:
        metafunc.parametrize("gateway_store", STORES, indirect=True)


@pytest.fixture
def gateway_store(request: pytest.FixtureRequest) -> str:
    """The store of `gateway_factory`'s gateways: SQLite unless the test is `both_stores`."""
    store: str = getattr(request, "param", "sqlite")
    return store


@pytest.fixture
def gateway_factory(
    tmp_path: Path, gateway_store: str, request: pytest.FixtureRequest
) -> Iterator[GatewayFactory]:
    """Start gateways from a routes YAML snippet; all are stopped at the end.

    On PostgreSQL every gateway of the test shares one fresh database (`pg_url`), as they
    share `tmp_path/durable.db` on SQLite: a restarted gateway finds its store again."""
    started: list[Gateway] = []
    shared_url: str | None = None
    if gateway_store == "postgres":
        shared_url = request.getfixturevalue("pg_url")

    def start(
        routes_yaml: str,
        *,
        extra_yaml: str = "",
        storage: str = "",
        server: str = "",
        db: Path | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        url: str | None = None,
        wait: bool = True,
    ) -> Gateway:
        """`url` names another store than the SQLite file `db`; with `wait` False the
        process is started and not waited for (`Gateway.wait_healthy`). `storage` and
        `server` are YAML lines added to those sections."""
        if shared_url is not None and db is not None:
            pytest.fail("a both_stores test names another store with url=, not db=")
        ports = free_ports(3)
        db_path = db or tmp_path / "durable.db"
        url = url or shared_url or f"sqlite:///{db_path}"
        config = (
            textwrap.dedent(f"""\
            server:
              ingress: 127.0.0.1:{ports[0]}
              sidecar: 127.0.0.1:{ports[1]}
              admin: 127.0.0.1:{ports[2]}
              shutdown_grace: 5s
            """)
            + textwrap.indent(textwrap.dedent(server).strip() + "\n" if server else "", "  ")
            + f"storage:\n  url: {url}\n"
            + textwrap.indent(textwrap.dedent(storage).strip() + "\n" if storage else "", "  ")
            + textwrap.dedent(extra_yaml)
            + "routes:\n"
            + textwrap.indent(textwrap.dedent(routes_yaml), "  ")
        )
        config_path = tmp_path / f"gateway-{ports[0]}.yaml"
        config_path.write_text(config)
        ingress, sidecar, admin = (f"http://127.0.0.1:{p}" for p in ports)
        gw = Gateway(ingress, sidecar, admin, config_path, db_path, env, args)
        gw.spawn()
        started.append(gw)
        if wait:
            gw.wait_healthy()
        return gw

    yield start
    for gw in started:
        gw.proc.stop()


def durable_route(upstream: str, name: str = "demo", path: str = "/demo/*", **settings: str) -> str:
    """A routes-list YAML entry; settings are YAML flow values, e.g. retry='{max_attempts: 3}'."""
    lines = [f"- name: {name}", f"  match: {{path: {path}}}", f"  upstream: {upstream}"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class HeldBackend:
    """A backend that records each attempt's headers and answers when the test says so."""

    attempts: asyncio.Queue[dict[str, str]] = field(default_factory=asyncio.Queue)
    answers: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await self.attempts.put(dict(request.headers))
        status = await self.answers.get()
        return web.json_response({"status": status}, status=status)


@contextlib.asynccontextmanager
async def catch_all(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An in-process backend answering every method and path with `handle`; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def held() -> AsyncIterator[HeldBackend]:
    backend = HeldBackend()
    async with catch_all(backend.handle) as backend.url:
        yield backend


@pytest.fixture
async def pg_url(pg_server: postgres.PgServer) -> str:
    """A fresh empty database on the session's PostgreSQL server."""
    return await pg_server.create_database()


ClusterFactory = Callable[..., list[Gateway]]


@pytest.fixture
def cluster_factory(gateway_factory: GatewayFactory, pg_url: str) -> ClusterFactory:
    """Start `nodes` gateways on one fresh PostgreSQL database, all at once, with one
    secret and node ids node-1, node-2, …; `lease` is `cluster.lease`."""

    def start(
        routes_yaml: str,
        *,
        nodes: int = 2,
        lease: str = "10s",
        storage: str = "",
        extra_yaml: str = "",
    ) -> list[Gateway]:
        gateways = [
            gateway_factory(
                routes_yaml,
                url=pg_url,
                storage=storage,
                extra_yaml=f"security:\n  secret: cluster-test-secret\n"
                f"cluster:\n  node_id: node-{i}\n  lease: {lease}\n{extra_yaml}",
                wait=False,
            )
            for i in range(1, nodes + 1)
        ]
        for gw in gateways:
            gw.wait_healthy()
        return gateways

    return start


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PgServer]:
    """One PostgreSQL server for the whole session; `create_database()` gives each test a
    fresh empty database. Fails (never skips) when the server binaries are missing.

    Its files live outside pytest's numbered temporary directories, which a second
    pytest session on the machine may delete from under a running server."""
    with tempfile.TemporaryDirectory(prefix="durable-pg-") as base:
        with postgres.pg_server(Path(base) / "pg") as server:
            yield server
