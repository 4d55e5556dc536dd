"""The command line: --version, --help, check, config errors with key paths, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import ROOT, counts, python


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python(), "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT, timeout=30
    )


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
