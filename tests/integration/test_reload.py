"""Configuration reload on a running gateway: SIGHUP and `durable-gateway reload`.

Real processes and real signals: requests keep flowing across reloads, a bad file
leaves the config in force, and the admin token and routes change without a restart.
"""

from __future__ import annotations

import asyncio
import signal
import textwrap
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Backend, Gateway, GatewayFactory, HeldBackend, durable_route
from tests.helpers import Proc, assert_eventually, free_ports, get_json, python, run_cli

FAST_RETRY = "{initial_backoff: 10ms, max_backoff: 10ms}"


def rewrite(gw: Gateway, routes_yaml: str) -> None:
    """Replace the routes in the gateway's config file."""
    head = gw.config_path.read_text().partition("routes:\n")[0]
    body = textwrap.indent(textwrap.dedent(routes_yaml), "  ")
    gw.config_path.write_text(head + "routes:\n" + body)


def hangup(gw: Gateway) -> None:
    gw.proc.popen.send_signal(signal.SIGHUP)


async def until_routes(
    http: aiohttp.ClientSession, gw: Gateway, names: list[str], token: str | None = None
) -> None:
    """Poll the runs API until the gateway serves exactly these routes."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def served() -> None:
        body = await get_json(http, f"{gw.admin}/v1/routes", headers=headers)
        assert [r["name"] for r in body["routes"]] == names

    await assert_eventually(served)


async def status_of(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    async with http.post(url, **kw) as resp:
        await resp.read()
        return resp.status


async def test_sighup_under_load_loses_no_request_and_swaps_routes(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A steady stream of durable requests, each failing once and retried, across several
    SIGHUPs (some back to back): every one is answered 200 at its second attempt; a route
    the reload adds answers after it, and 404s again once a reload removes it."""
    demo = durable_route(backend.url, path="/demo/steps", retry=FAST_RETRY)
    extra = durable_route(backend.url, name="extra", path="/demo/echo")
    gw = gateway_factory(demo)
    answers: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def client(n: int) -> None:
        i = 0
        while not done.is_set():
            url = gw.url(f"/demo/steps?n=2&fail_at=2&run=c{n}-{i}")
            async with http.post(url) as resp:
                body = await resp.json()
                answers.append((resp.status, body.get("attempt", 0)))
            i += 1

    clients = [asyncio.ensure_future(client(n)) for n in range(4)]
    try:
        for cycle in range(3):
            rewrite(gw, demo + extra)
            hangup(gw)
            await until_routes(http, gw, ["demo", "extra"])
            assert await status_of(http, gw.url("/demo/echo")) == 200
            changed = durable_route(backend.url, path="/demo/steps", retry=FAST_RETRY, hold="20s")
            rewrite(gw, changed)
            for _ in range(cycle + 1):  # concurrent SIGHUPs are serialised
                hangup(gw)
            await until_routes(http, gw, ["demo"])
            assert await status_of(http, gw.url("/demo/echo")) == 404
        await assert_eventually(lambda: _at_least(answers, 100))
    finally:
        done.set()
        await asyncio.gather(*clients)
    assert answers and all(answer == (200, 2) for answer in answers), answers
    logs = gw.logs()
    # Signals sent back to back may arrive as one (POSIX does not queue them).
    assert 6 <= logs.count("INFO    gateway reloaded ") <= 9
    assert "reload refused" not in logs and "Traceback" not in logs
    assert gw.proc.popen.poll() is None


async def _at_least(answers: list[tuple[int, int]], count: int) -> None:
    assert len(answers) >= count


async def test_a_run_of_a_removed_route_finishes_under_the_settings_it_had(
    held: HeldBackend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    retry = "{max_attempts: 3, initial_backoff: 10ms, on: [503]}"
    gone = durable_route(held.url, name="gone", path="/gone/*", retry=retry)
    kept = durable_route(held.url, name="kept", path="/kept/*")
    gw = gateway_factory(gone + kept)
    call = asyncio.ensure_future(http.post(gw.url("/gone/x")))
    try:
        await asyncio.wait_for(held.attempts.get(), 15)  # attempt 1 is upstream
        rewrite(gw, kept)
        hangup(gw)
        await until_routes(http, gw, ["kept"])
        await held.answers.put(503)  # retried under the removed route's retry policy
        headers = await asyncio.wait_for(held.attempts.get(), 15)
        assert headers["Durable-Attempt"] == "2"
        await held.answers.put(200)
        resp = await asyncio.wait_for(call, 15)
        assert resp.status == 200, await resp.text()
    finally:
        if not call.done():
            call.cancel()
        else:
            call.result().release()
    assert await status_of(http, gw.url("/gone/x")) == 404


async def test_a_bad_file_is_refused_with_its_key_path_and_the_old_config_serves_on(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    rewrite(gw, durable_route(backend.url, retry="{max_attempts: 0}"))
    line = gw.config_path.read_text().splitlines().index("    retry: {max_attempts: 0}") + 1
    hangup(gw)
    error = (
        f"ERROR   gateway reload refused, the configuration in force is kept: "
        f"{gw.config_path}:{line} routes[0].retry.max_attempts: must be >= 1"
    )

    async def logged() -> None:
        assert error in gw.logs()

    await assert_eventually(logged)
    assert await status_of(http, gw.url("/demo/echo")) == 200
    assert gw.proc.popen.poll() is None
    # The same file through the admin API: 422 with the same text, nothing changed.
    async with http.post(f"{gw.admin}/v1/admin/reload") as resp:
        assert resp.status == 422
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert problem["detail"] == error.partition("kept: ")[2]
    assert "reloaded" not in gw.logs()


async def test_reload_command_exit_codes(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """0 when the gateway reloaded; 2 for a file bad here (the gateway is not asked) or
    bad where the gateway reads it (its own environment); 1 when it cannot be reached."""
    gw = gateway_factory(durable_route(backend.url, path="/demo/steps"))
    config = str(gw.config_path)
    assert await status_of(http, gw.url("/demo/echo")) == 404
    extra = durable_route(backend.url, name="extra", path="/demo/echo")
    rewrite(gw, durable_route(backend.url, path="/demo/steps") + extra)
    ok = run_cli("reload", "--config", config)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{config}: reloaded (routes: 1 added, 0 removed, 0 changed)\n"
    assert await status_of(http, gw.url("/demo/echo")) == 200

    rewrite(gw, durable_route(backend.url, retry="{max_attempts: 0}"))
    local = run_cli("reload", "--config", config)
    assert local.returncode == 2
    assert "routes[0].retry.max_attempts: must be >= 1" in local.stderr
    assert "reload refused" not in gw.logs()  # refused here: the gateway was not asked

    # Valid where the command runs, not in the gateway's environment: the gateway says so.
    rewrite(gw, durable_route("${RELOAD_TEST_UPSTREAM}"))
    remote = run_cli("reload", "--config", config, env={"RELOAD_TEST_UPSTREAM": backend.url})
    assert remote.returncode == 2, remote.stderr
    assert remote.stderr.startswith("durable-gateway: the gateway kept its configuration: ")
    assert "environment variable RELOAD_TEST_UPSTREAM is not set" in remote.stderr
    assert await status_of(http, gw.url("/demo/echo")) == 200  # still the config in force

    assert gw.proc.stop() == 0
    rewrite(gw, durable_route(backend.url))
    gone = run_cli("reload", "--config", config)
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"durable-gateway: cannot reach the gateway at {gw.admin}/")


async def test_an_admin_token_change_takes_effect_at_once(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    route = durable_route(backend.url)
    gw = gateway_factory(route, extra_yaml="security: {admin_token: first-token}\n")
    first = {"Authorization": "Bearer first-token"}
    second = {"Authorization": "Bearer second-token"}
    runs = f"{gw.admin}/v1/runs"
    async with http.get(runs, headers=first) as resp:
        assert resp.status == 200
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace("first-token", "second-token"))
    # The command sends the file's token, which the gateway does not know yet.
    refused = run_cli("reload", "--config", str(gw.config_path))
    assert refused.returncode == 1
    assert "401" in refused.stderr and "reload with SIGHUP instead" in refused.stderr
    hangup(gw)
    await until_routes(http, gw, ["demo"], token="second-token")
    async with http.get(runs, headers=first) as resp:
        assert resp.status == 401
    async with http.get(runs, headers=second) as resp:
        assert resp.status == 200
    assert "routes: 0 added, 0 removed, 0 changed, 1 unchanged; admin token changed" in gw.logs()


async def test_settings_that_need_a_restart_are_kept_and_named(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(backend.url))
    text = gw.config_path.read_text()
    moved = text.replace("shutdown_grace: 5s", "shutdown_grace: 7s").replace(
        "storage:\n", "cluster: {node_id: renamed}\nstorage:\n"
    )
    gw.config_path.write_text(moved)
    async with http.post(f"{gw.admin}/v1/admin/reload") as resp:
        assert resp.status == 200
        summary = await resp.json()
    assert summary["needs_restart"] == ["server.shutdown_grace", "cluster.node_id"]
    assert summary["routes"] == {
        "added": [],
        "removed": [],
        "changed": [],
        "unchanged": 1,
        "reordered": False,
    }
    assert (
        f"WARNING gateway {gw.config_path} changes server.shutdown_grace, cluster.node_id:"
        " kept as started until a restart" in gw.logs()
    )


async def test_a_sighup_while_starting_does_not_end_the_gateway(tmp_path: Path) -> None:
    """Sent while the gateway waits for its database: noted, not fatal (it used to end
    the process with 129); the start then fails as it would have, in one line."""
    ports = free_ports(4)
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"server: {{ingress: 127.0.0.1:{ports[0]}, sidecar: 127.0.0.1:{ports[1]},"
        f" admin: 127.0.0.1:{ports[2]}}}\n"
        f"storage: {{url: 'postgresql://dg:pw@127.0.0.1:{ports[3]}/durable'}}\n"
        "routes:\n  - {name: a, match: /a, upstream: 'http://127.0.0.1:1'}\n"
    )
    proc = Proc(
        [python(), "-m", "gateway", "--config", str(config)],
        tmp_path / "gw.log",
        env={"DURABLE_START_WAIT": "3"},
    )
    try:

        async def waiting() -> None:
            assert "waiting for the database" in proc.output()

        await assert_eventually(waiting)
        proc.popen.send_signal(signal.SIGHUP)
        assert await asyncio.to_thread(proc.popen.wait, 20) == 1
    finally:
        proc.stop()
    errors = [line for line in proc.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start: " in errors[0] and "gave up after 3s" in errors[0]


async def test_a_reload_turns_a_circuit_breaker_on_for_the_next_attempts(
    backend: Backend, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Budgets and breakers are built per reload from the routes in force: a breaker a
    reload adds opens on the next failures, and the one after turns it off again."""
    failing = "{max_attempts: 1, budget: off}"
    route = durable_route(backend.url, retry=failing)
    gw = gateway_factory(route)
    breaker = durable_route(
        backend.url, retry=failing, circuit_breaker="{failures: 2, interval: 1h}"
    )

    async def failures(n: int) -> None:
        for i in range(n):
            url = gw.url(f"/demo/steps?n=1&fail_at=1&fail_times=9&r={i}")
            async with http.post(url, headers={"Prefer": "wait=1"}) as resp:
                await resp.read()

    await failures(3)
    await _gone(http, gw)
    rewrite(gw, breaker)
    hangup(gw)
    await assert_eventually(lambda: _logged(gw, "reloaded"))
    await failures(3)
    await assert_eventually(lambda: _circuit(http, gw, backend.url, "1.0"))
    rewrite(gw, route)
    hangup(gw)
    await assert_eventually(lambda: _gone(http, gw))


async def metrics(http: aiohttp.ClientSession, gw: Gateway) -> str:
    async with http.get(f"{gw.admin}/metrics") as resp:
        return await resp.text()


async def _logged(gw: Gateway, text: str) -> None:
    assert text in gw.logs()


async def _circuit(http: aiohttp.ClientSession, gw: Gateway, upstream: str, value: str) -> None:
    assert f'durable_circuit_state{{upstream="{upstream}"}} {value}' in await metrics(http, gw)


async def _gone(http: aiohttp.ClientSession, gw: Gateway) -> None:
    assert "durable_circuit_state{" not in await metrics(http, gw)
