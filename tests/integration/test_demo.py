"""`durable-gateway demo`: the gateway and the example backend start and stop together, and
a gateway killed with `kill -9` comes back on the same store with its run resumed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Proc, accept, assert_eventually, final, free_port, free_ports, python


def consecutive_free_ports(count: int) -> int:
    """A port P with P .. P+count-1 all free (the demo's ingress, sidecar and admin), none
    of which `free_port` gives again soon (`free_ports` hands its ports out in turn)."""
    for _ in range(50):
        ports = free_ports(count)
        if ports == list(range(ports[0], ports[0] + count)):
            return ports[0]
    raise RuntimeError("no run of free ports")


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def test_demo_runs_both_restarts_a_killed_gateway_and_stops_both_on_ctrl_c(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port, backend_port = consecutive_free_ports(3), free_port()
    demo = Proc(
        [
            python(),
            "-m",
            "gateway",
            "demo",
            "--port",
            str(port),
            "--backend-port",
            str(backend_port),
        ],
        tmp_path / "demo.log",
        new_session=True,
    )
    try:
        tour = await assert_eventually(lambda: _after(demo, "Ctrl-C stops both"), within=30)
        first_pid = int(re.findall(r"\(pid (\d+)\)", tour)[0])
        gw = f"http://127.0.0.1:{port}"
        assert f"curl -i -X POST '{gw}/demo/steps?n=3&fail_at=2'" in tour
        async with http.post(f"{gw}/demo/steps?n=3&fail_at=2") as resp:
            assert resp.status == 200
            assert (await resp.json())["attempt"] == 2

        run_id, location = await accept(http, f"{gw}/demo/steps?n=4&pause_ms=400")
        await assert_eventually(lambda: _ran(http, gw, run_id, "step-2"), within=30)
        os.kill(first_pid, signal.SIGKILL)
        again = await assert_eventually(lambda: _after(demo, "running again"), within=30)
        second_pid = int(re.findall(r"running again \(pid (\d+)\)", again)[0])
        status, body = await final(http, location)
        assert status == 200 and body["attempt"] == 2
        ran = await _ran(http, gw, run_id, "step-4")
        assert ran["step-1"] == 1  # committed well before the kill: not run again

        os.killpg(demo.popen.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        assert demo.popen.wait(30) == 0
    finally:
        demo.stop()
    assert refuses(port) and refuses(backend_port)
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(second_pid, 0)


def test_demo_with_its_backend_port_taken_says_so_and_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [
                python(),
                "-m",
                "gateway",
                "demo",
                "--port",
                str(consecutive_free_ports(3)),
                "--backend-port",
                str(busy),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"could not listen on port {busy}" in lines[0] and "--backend-port" in lines[0]


async def _ran(http: aiohttp.ClientSession, gw: str, run_id: str, step: str) -> dict[str, int]:
    """How often each step of the run ran, once `step` has (through the plain route)."""
    async with http.get(f"{gw}/_counts") as resp:
        ran: dict[str, int] = (await resp.json()).get(run_id, {})
    assert step in ran, ran
    return ran


async def _after(demo: Proc, marker: str) -> str:
    output = demo.output()
    assert marker in output, output[-2000:]
    return output
