"""The command line: --version, --help, check, config errors with key paths, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import ROOT, counts, free_port, free_ports, python, run_cli
from tests.postgres import PgServer


def config_with_storage(tmp_path: Path, url: str) -> Path:
    """A config on free ports whose `storage.url` (line 3) is `url`."""
    ingress, sidecar, admin = free_ports(3)
    config = tmp_path / f"gateway-{ingress}.yaml"
    config.write_text(
        f"server: {{ingress: 127.0.0.1:{ingress}, sidecar: 127.0.0.1:{sidecar},"
        f" admin: 127.0.0.1:{admin}}}\n"
        "storage:\n"
        f"  url: '{url}'\n"
        "routes:\n"
        "  - {name: a, match: {path: /a}, upstream: 'http://127.0.0.1:1'}\n"
    )
    return config


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and "durable-gateway" in version.stdout
    help_ = run_cli("--help")
    assert help_.returncode == 0 and "--config" in help_.stdout


def test_check_accepts_the_example_config() -> None:
    result = run_cli("check", "--config", str(ROOT / "config.example.yaml"))
    assert result.returncode == 0, result.stderr


def test_bad_config_names_file_line_and_key_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "routes:\n"
        "  - name: a\n"
        "    match: {path: /a}\n"
        "    upstream: http://127.0.0.1:1\n"
        "    retry:\n"
        "      max_attempts: 0\n"
    )
    for args in (["check", "--config", str(config)], ["--config", str(config)]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert f"{config}:6 routes[0].retry.max_attempts: must be >= 1" in result.stderr


def test_missing_config_is_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("--config", "/nonexistent/gateway.yaml").returncode == 2


async def test_sigterm_exits_0_and_keeps_finished_results(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    async with http.get(gw.url("/demo/echo")) as resp:
        assert resp.status == 200
    assert gw.proc.stop(signal.SIGTERM) == 0
    assert "stopped" in gw.proc.output()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_either_event_loop_runs_a_run_that_resumes(
    loop: str, backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url), args=("--loop", loop))
    async with http.post(gw.url("/demo/steps?n=3&fail_at=2&run=loop")) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["attempt"] == 2
    assert await counts(http, backend, body["run_id"]) == {"step-1": 1, "step-2": 1, "step-3": 1}
    logs = gw.logs()
    assert f"event loop: {loop}" in logs
    assert "runtime: GIL switch interval 0.5 ms, gc thresholds (20000, " in logs


_SQLITE_FORMS = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
_FORMS = f"{_SQLITE_FORMS}, or postgresql://user:password@host:5432/database"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:", f"an sqlite URL has three slashes and no host: {_SQLITE_FORMS}"),
        ("sqlite:///", f"the sqlite URL names no file: {_SQLITE_FORMS}"),
        ("sqlite:///x.db?mode=ro", "an sqlite URL takes no query string or fragment (?… or #…)"),
        (
            "sqlite:///:memory:",
            "sqlite:///:memory: keeps nothing across a restart: name a database file",
        ),
        ("sqlite:///data", "data is a directory: name a database file inside it"),
        ("sqlite:///data/", "the sqlite URL names a directory, not a database file"),
        (
            "sqlite:///notes.txt/gw.db",
            "the directory of notes.txt/gw.db cannot be created: notes.txt is not a directory",
        ),
        (
            "postgresql://dg:pw@db:x/durable",
            "the postgresql URL's port is not a number from 1 to 65535",
        ),
        ("postgres://db/", "the postgres URL names no database: add /database after the host"),
        ("postgresql:db/durable", f"a postgresql URL starts with postgresql://: {_FORMS}"),
        ("mysql://db/durable", f"unknown scheme 'mysql': {_FORMS}"),
    ],
)
def test_check_and_run_refuse_a_store_this_build_cannot_open(
    tmp_path: Path, url: str, message: str
) -> None:
    """`check` refuses, with exit 2, every URL `run` would refuse; `run` the same way."""
    (tmp_path / "data").mkdir()
    (tmp_path / "notes.txt").write_text("")
    config = config_with_storage(tmp_path, url)
    before = sorted(tmp_path.rglob("*"))
    for args in (["check", "--config", str(config)], ["--config", str(config), "run"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == f"durable-gateway: {config}:3 storage.url: {message}\n"
    assert sorted(tmp_path.rglob("*")) == before  # nothing was created on the way


def test_a_store_that_cannot_be_opened_is_one_line_and_exit_1(
    tmp_path: Path, gateway_factory: GatewayFactory, backend: Backend
) -> None:
    """Runtime failures to open the store: no traceback, one line saying why, exit 1.

    `check` accepts these configs: the file's state is not configuration.
    """
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, just text\n" * 200)
    (tmp_path / "locked.db.lock").mkdir()  # where the store's lock file must go
    holder = gateway_factory(durable_route(backend.url))  # holds tmp_path/durable.db
    cases = {
        "garbage.db": f"cannot start: sqlite: opening failed on {garbage}: file is not a database",
        "locked.db": f"cannot start: sqlite: cannot open the lock file {tmp_path}/locked.db.lock",
        "durable.db": f"cannot start: sqlite store {holder.db_path} is in use by another gateway"
        f" process (pid {holder.proc.popen.pid})",
    }
    for name, line in cases.items():
        config = config_with_storage(tmp_path, f"sqlite:///{tmp_path}/{name}")
        assert run_cli("check", "--config", str(config)).returncode == 0
        result = run_cli("--config", str(config))
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        errors = [entry for entry in result.stderr.splitlines() if " ERROR " in entry]
        assert len(errors) == 1 and line in errors[0], result.stderr


async def test_a_database_refusing_the_password_exits_1_at_once_without_echoing_it(
    tmp_path: Path, pg_server: PgServer
) -> None:
    await pg_server.password_user("dg_test", "right-one")
    url = f"postgresql://dg_test:Wr0ngPassw0rd@127.0.0.1:{pg_server.port}/postgres"
    config = config_with_storage(tmp_path, url)
    assert run_cli("check", "--config", str(config)).returncode == 0
    began = time.monotonic()
    result = run_cli("--config", str(config))
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - began < 20  # not the start-up wait: a password never fixes itself
    assert "Wr0ngPassw0rd" not in result.stderr and "Traceback" not in result.stderr
    errors = [entry for entry in result.stderr.splitlines() if " ERROR " in entry]
    assert len(errors) == 1, result.stderr
    assert 'cannot start: postgresql: authentication failed for user "dg_test"' in errors[0]


def test_an_unreachable_database_is_waited_for_then_exit_1_naming_the_cause(
    tmp_path: Path,
) -> None:
    url = f"postgresql://dg:s3cret@127.0.0.1:{free_port()}/durable"
    config = config_with_storage(tmp_path, url)
    result = subprocess.run(
        [python(), "-m", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "DURABLE_START_WAIT": "2"},
    )
    assert result.returncode == 1, result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr
    waits = [line for line in result.stderr.splitlines() if "waiting for the database" in line]
    assert waits and "connection refused" in waits[0], result.stderr
    errors = [entry for entry in result.stderr.splitlines() if " ERROR " in entry]
    assert len(errors) == 1 and "connection refused" in errors[0], result.stderr
    assert "gave up after 2s" in errors[0]


@pytest.mark.parametrize("admin", ["0.0.0.0", "[::]", "192.0.2.7", "gateway.internal"])
def test_an_admin_listener_beyond_loopback_without_a_token_is_refused(
    tmp_path: Path, admin: str
) -> None:
    """`check` and `run` alike: one line naming the setting, exit 2, nothing bound."""
    config = config_with_storage(tmp_path, f"sqlite:///{tmp_path}/gw.db")
    text = config.read_text()
    port = text.partition("admin: 127.0.0.1:")[2].partition("}")[0]
    config.write_text(text.replace(f"admin: 127.0.0.1:{port}", f"admin: '{admin}:{port}'"))
    host = admin.strip("[]")
    line = (
        f"durable-gateway: {config}:1 server.admin: listens on {host}, beyond loopback,"
        " without security.admin_token: set a token, or bind the admin listener to 127.0.0.1\n"
    )
    for args in (["check", "--config", str(config)], ["--config", str(config)]):
        result = run_cli(*args)
        assert (result.returncode, result.stderr) == (2, line)
    assert not (tmp_path / "gw.db").exists()
    config.write_text(config.read_text() + "security: {admin_token: s3cret-token}\n")
    assert run_cli("check", "--config", str(config)).returncode == 0


def test_a_postgresql_store_without_its_driver_is_refused_by_check_and_run(
    tmp_path: Path,
) -> None:
    """This build without asyncpg (the `postgres` extra): exit 2 before anything starts."""
    config = config_with_storage(tmp_path, "postgresql://dg:pw@127.0.0.1:5432/durable")
    without = "import sys; sys.modules['asyncpg'] = None; from gateway.cli import main; "
    line = (
        f"durable-gateway: {config}:3 storage.url: a postgresql store needs the asyncpg"
        " package, which is not installed: pip install 'durable-gateway[postgres]'\n"
    )
    for args in (["check", "--config", str(config)], ["--config", str(config)]):
        code = without + f"sys.exit(main({args!r}))"
        result = subprocess.run(
            [python(), "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30
        )
        assert (result.returncode, result.stderr) == (2, line)


def test_tracing_needs_no_opentelemetry_package(tmp_path: Path) -> None:
    """The gateway encodes OTLP itself: with nothing of `opentelemetry` importable, a
    config that turns tracing on passes `check`, and the exporter's module loads."""
    config = config_with_storage(tmp_path, f"sqlite:///{tmp_path}/gw.db")
    config.write_text(config.read_text() + "tracing:\n  otlp_endpoint: http://127.0.0.1:4318\n")
    code = (
        "import sys; sys.modules['opentelemetry'] = None; import gateway.engine.span_export; "
        f"from gateway.cli import main; sys.exit(main(['check', '--config', {str(config)!r}]))"
    )
    result = subprocess.run(
        [python(), "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_a_listener_address_in_use_is_one_line_naming_the_listener_and_exit_1(
    tmp_path: Path,
) -> None:
    config = config_with_storage(tmp_path, f"sqlite:///{tmp_path}/gw.db")
    port = int(config.read_text().partition("sidecar: 127.0.0.1:")[2].partition(",")[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert run_cli("check", "--config", str(config)).returncode == 0
        result = run_cli("--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [entry for entry in result.stderr.splitlines() if " ERROR " in entry]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(
        f"cannot start: server.sidecar 127.0.0.1:{port}: address already in use"
    )
