"""`durable-gateway demo`: the gateway and the example backend as two child processes.

One command for a first look: both start together, both stop together on Ctrl-C (a
stale backend cannot linger and answer the next demo), and a gateway killed with
`kill -9` is started again on the same store, as a service manager would, so a run
interrupted by the crash can be seen resuming.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.config import local_url

START_WAIT = 30.0
"""How long each child may take to start listening."""
STOP_WAIT = 15.0
"""How long each child may take to stop before it is killed."""

CONFIG = """\
server:
  ingress: {host}:{port}
  sidecar: 127.0.0.1:{sidecar}
  admin: {admin_host}:{admin}
  shutdown_grace: 5s
storage:
  url: sqlite:///{db}
{security}routes:
  - name: demo
    match: {{path: /demo/*}}
    upstream: http://127.0.0.1:{backend}
    retry: {{initial_backoff: 500ms}}
  - name: counts
    match: {{path: /_counts}}
    upstream: http://127.0.0.1:{backend}
    durable: false
"""


class DemoFailed(Exception):
    """A child could not start; the message says which and why."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="run the gateway with the bundled example backend and print what to try"
    )
    demo.add_argument(
        "--host",
        default="127.0.0.1",
        help="address of the gateway's ingress (0.0.0.0 in a container); default 127.0.0.1",
    )
    demo.add_argument(
        "--port", type=int, default=8080, help="ingress port; sidecar +1, admin +2 (8080)"
    )
    demo.add_argument("--backend-port", type=int, default=3000, help="example backend (3000)")


def run(args: argparse.Namespace, loop: str) -> int:
    """Start both children, print the tour, supervise until Ctrl-C or SIGTERM."""
    stop = _stop_on_signals()
    with tempfile.TemporaryDirectory(prefix="durable-demo-") as scratch:
        config = Path(scratch) / "demo.yaml"
        exposed = args.host not in ("127.0.0.1", "localhost", "::1")
        # Beyond loopback the admin listener needs a token; the demo's is printed.
        security = "security:\n  admin_token: demo-admin-token\n" if exposed else ""
        config.write_text(
            CONFIG.format(
                host=args.host,
                port=args.port,
                sidecar=args.port + 1,
                admin_host=args.host,
                admin=args.port + 2,
                security=security,
                db=Path(scratch) / "demo.db",
                backend=args.backend_port,
            )
        )
        gateway_cmd = [sys.executable, "-m", "gateway", "--loop", loop, "--config", str(config)]
        ready_url = local_url((args.host, args.port + 2)) + "/readyz"
        backend: subprocess.Popen[bytes] | None = None
        gateway: subprocess.Popen[bytes] | None = None
        try:
            backend = _start_backend(args.backend_port, Path(scratch) / "backend.log")
            gateway = _start_gateway(gateway_cmd, ready_url)
            print(_tour(args, gateway.pid, exposed), flush=True)
            while True:
                time.sleep(0.2)
                if stop:  # Ctrl-C reaches the children too: they may be gone already
                    return 0
                if backend.poll() is not None:
                    raise DemoFailed(f"the example backend exited ({backend.returncode})")
                code = gateway.poll()
                if code is None:
                    continue
                if code >= 0:
                    return code
                print(
                    f"\ndemo: the gateway was killed ({signal.Signals(-code).name}); starting it"
                    " again on the same store, as a service manager would",
                    flush=True,
                )
                gateway = _start_gateway(gateway_cmd, ready_url)
                print(f"demo: gateway running again (pid {gateway.pid})", flush=True)
        except DemoFailed as err:
            print(f"durable-gateway demo: {err}", file=sys.stderr)
            return 1
        finally:
            for child in (gateway, backend):
                if child is not None:
                    _stop(child)


def _stop_on_signals() -> list[int]:
    """A list that gets the signal number on Ctrl-C or SIGTERM: the loop's stop flag.

    The children are in our process group, so a terminal's Ctrl-C reaches them too;
    they stop on it themselves, and `_stop` makes sure of it.
    """
    caught: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: caught.append(number))
    return caught


def _start_backend(port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the example backend, its errors into `log` (a pipe nobody drains would
    stop it once full); wait until it says it listens."""
    cmd = [sys.executable, "-m", "step_protocol.demo", "--port", str(port)]
    with log.open("wb") as errors:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
    assert child.stdout is not None
    with selectors.DefaultSelector() as ready:  # a backend that never says so: bounded
        ready.register(child.stdout, selectors.EVENT_READ)
        started = ready.select(START_WAIT)
    line = child.stdout.readline().decode(errors="replace") if started else ""
    if not line.startswith("listening on"):  # "listening on PORT"
        _stop(child)
        why = log.read_text(errors="replace").strip().splitlines()
        reason = why[-1] if why else f"exit {child.returncode}"
        raise DemoFailed(
            f"the example backend could not listen on port {port}: {reason}"
            " (--backend-port picks another)"
        )
    return child


def _start_gateway(cmd: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    """Start the gateway with its logs on our terminal; wait until `/readyz` says so."""
    child = subprocess.Popen(cmd)
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DemoFailed(f"the gateway exited ({child.returncode}); its log says why")
        try:
            with urllib.request.urlopen(ready_url, timeout=1):
                return child
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    _stop(child)
    raise DemoFailed(f"the gateway was not ready within {START_WAIT:.0f}s")


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tour(args: argparse.Namespace, pid: int, exposed: bool) -> str:
    shown = "127.0.0.1" if not exposed else "localhost"
    gw = f"http://{shown}:{args.port}"
    admin = f"http://{shown}:{args.port + 2}"
    auth = " -H 'Authorization: Bearer demo-admin-token'" if exposed else ""
    kill = f"kill -9 {pid}" + (
        f"   # in a container: docker exec CONTAINER kill -9 {pid}" if exposed else ""
    )
    return f"""
Durable Gateway demo: gateway {gw} (pid {pid}), example backend on port \
{args.backend_port}, dashboard {admin}/ . Ctrl-C stops both.

Try these in another terminal:

  # Three steps; attempt 1 fails just before step 2 with a 500. The retry gets step 1's
  # output back and skips it: "attempt": 2, and step-1 ran once.
  curl -i -X POST '{gw}/demo/steps?n=3&fail_at=2'
  curl -s '{gw}/_counts'

  # The same with the connection dropped (mode= acts at fail_at, so give both;
  # mode=503&retry_after=2 and mode=hang work the same way):
  curl -i -X POST '{gw}/demo/steps?n=3&fail_at=2&mode=drop'

  # A durable sleep: the client is held 10 s, then sent to the result URL (-L follows).
  curl -iL '{gw}/demo/sleep?seconds=15'

  # Wait for an event: the run waits (-L follows the 303) until the event is posted.
  curl -iL '{gw}/demo/wait?event=order.paid&order_id=42' &
  curl -i -X POST '{admin}/v1/events'{auth} -H 'Content-Type: application/json' \\
       -d '{{"name": "order.paid", "data": {{"order_id": "42"}}}}'

  # Crash the gateway mid-run: start a slow run (202 and its result URL at once),
  # kill -9 the gateway; this demo starts it again and the run resumes where it was.
  curl -si -X POST -H 'Prefer: respond-async' '{gw}/demo/steps?n=5&pause_ms=1500' \\
       | grep -i '^location'
  {kill}
  curl -s --retry 10 --retry-connrefused '<the Location above>'   # "attempt": 2
"""
