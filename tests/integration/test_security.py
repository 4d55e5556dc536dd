"""What the store keeps is safe to keep: client credentials sealed in the real SQLite file
and PostgreSQL rows yet replayed to the backend, redacted by the runs API, store files
0600, and a secret rotated without breaking result URLs, run tokens or stored credentials.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.engine.credentials import PREFIX, REDACTED
from tests.conftest import Gateway, GatewayFactory, HeldBackend, durable_route
from tests.helpers import accept, assert_eventually, final, get_json, until_status

TOKEN = "Bearer tok-7f3a9c1e5b2d4086"
COOKIE = "session=ck-51e8b0d2a6f4"
API_KEY = "key-0c9d8e7f6a5b"
CREDENTIALS = {"Authorization": TOKEN, "Cookie": COOKIE, "X-Api-Key": API_KEY}
CLEAR = [b"tok-7f3a9c1e5b2d4086", b"ck-51e8b0d2a6f4", b"key-0c9d8e7f6a5b"]
BODY = b'{"card": "4111-0000"}'
"""Stored in the clear (bodies are the backend's input), but never logged."""
SENSITIVE = "security:\n  sensitive_headers: [X-Api-Key]\n"
ROUTE_RETRY = "{max_attempts: 3, initial_backoff: 50ms, jitter: 0}"


def store_files(db: Path) -> dict[str, tuple[int, bytes]]:
    """The SQLite database and its -wal and -shm files: mode and contents of each."""
    files = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        files[suffix] = (stat.S_IMODE(path.stat().st_mode), path.read_bytes())
    return files


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def leaks(raw: bytes) -> list[bytes]:
    """The credentials (or their hex, as PostgreSQL shows bytea) found in `raw`."""
    return [c for c in CLEAR if c in raw or c.hex().encode() in raw]


async def stored_run(gw: Gateway, pg_url: str | None, run_id: str) -> tuple[list[Any], bytes]:
    """The run's stored `req_headers` as JSON, and its whole row as the store keeps it."""
    if pg_url is None:
        with closing(sqlite3.connect(gw.db_path)) as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            (headers,) = db.execute(
                "SELECT req_headers FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return orjson.loads(headers), repr(row).encode()
    conn = await asyncpg.connect(pg_url)
    try:
        headers = await conn.fetchval("SELECT req_headers FROM runs WHERE run_id = $1", run_id)
        row = await conn.fetchval(
            "SELECT row_to_json(runs)::text FROM runs WHERE run_id = $1", run_id
        )
    finally:
        await conn.close()
    return orjson.loads(headers), row.encode()


@pytest.mark.both_stores
async def test_credentials_are_stored_sealed_replayed_and_shown_redacted(
    gateway_factory: GatewayFactory,
    gateway_store: str,
    held: HeldBackend,
    http: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
) -> None:
    gw = gateway_factory(durable_route(held.url, retry=ROUTE_RETRY), extra_yaml=SENSITIVE)
    posted = asyncio.ensure_future(
        http.post(gw.url("/demo/pay"), data=BODY, headers={**CREDENTIALS, "X-Trace": "t-1"})
    )
    first = lowered(await asyncio.wait_for(held.attempts.get(), 10))
    await held.answers.put(500)  # attempt 1 fails: attempt 2 is built from the stored run
    second = lowered(await asyncio.wait_for(held.attempts.get(), 10))
    await held.answers.put(200)
    async with await posted as resp:
        assert resp.status == 200
    run_id = first["durable-run-id"]
    assert second["durable-attempt"] == "2"
    for name, value in CREDENTIALS.items():
        assert first[name.lower()] == second[name.lower()] == value
    assert second["x-trace"] == "t-1"
    detail = await until_status(http, gw, run_id, "succeeded")

    pg_url = request.getfixturevalue("pg_url") if gateway_store == "postgres" else None
    headers, row = await stored_run(gw, pg_url, run_id)
    stored = {name.lower(): value for name, value in headers}
    for name in ("authorization", "cookie", "x-api-key"):
        assert stored[name].startswith(PREFIX), stored[name]
    assert stored["x-trace"] == "t-1"
    assert leaks(row) == []
    if gateway_store == "sqlite":
        for suffix, (mode, raw) in store_files(gw.db_path).items():
            assert leaks(raw) == [], suffix
            assert mode == 0o600, suffix

    shown = {name.lower(): value for name, value in detail["request"]["headers"]}
    assert shown["authorization"] == shown["cookie"] == shown["x-api-key"] == REDACTED
    assert shown["x-trace"] == "t-1"
    listed = await get_json(http, f"{gw.admin}/v1/runs")
    assert leaks(orjson.dumps([detail, listed])) == []
    logs = gw.logs()  # at debug level
    assert leaks(logs.encode()) == [] and "4111-0000" not in logs


async def test_a_live_runs_credentials_are_redacted_too(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(held.url), extra_yaml=SENSITIVE)
    request = asyncio.ensure_future(http.post(gw.url("/demo/x"), headers=CREDENTIALS))
    attempt = lowered(await asyncio.wait_for(held.attempts.get(), 10))
    detail = await get_json(http, f"{gw.admin}/v1/runs/{attempt['durable-run-id']}")
    assert detail["status"] == "running"
    assert leaks(orjson.dumps(detail)) == []
    shown = dict(detail["request"]["headers"])
    assert shown["Authorization"] == shown["Cookie"] == shown["X-Api-Key"] == REDACTED
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200


# ── rotation: real restarts under a new secret ───────────────────────────────────


def security(secret: str, previous: list[str] | None = None) -> str:
    text = f"security:\n  secret: {secret}\n"
    return text + (f"  previous_secrets: [{', '.join(previous)}]\n" if previous else "")


def restart_with(gw: Gateway, before: str, after: str, *, kill: bool = False) -> None:
    """Stop the gateway (SIGTERM, or SIGKILL), swap its security section, start again."""
    if kill:
        gw.kill()
    else:
        gw.proc.stop()
    text = gw.config_path.read_text()
    assert before in text
    gw.config_path.write_text(text.replace(before, after))
    gw.starts += 1
    gw.launch()


async def test_result_urls_and_run_tokens_survive_rotation_until_dropped(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(durable_route(held.url), extra_yaml=security("alpha-secret"))
    request = asyncio.ensure_future(http.post(gw.url("/demo/x")))
    attempt = lowered(await asyncio.wait_for(held.attempts.get(), 10))
    await held.answers.put(200)
    async with await request as resp:
        assert resp.status == 200
        result_url = resp.headers["Durable-Result"]
    run_id = attempt["durable-run-id"]
    steps_url = attempt["durable-sidecar"] + "/steps"
    auth = {"Authorization": "Bearer " + attempt["durable-token"]}
    status_url = result_url.replace("/result?", "?")
    await until_status(http, gw, run_id, "succeeded")

    async def answers() -> tuple[int, int, int]:
        async with (
            http.get(result_url) as result,
            http.get(steps_url, headers=auth) as steps,
            http.get(status_url) as status,
        ):
            return result.status, steps.status, status.status

    assert await answers() == (200, 200, 200)
    rotated = security("beta-secret", ["alpha-secret"])
    restart_with(gw, security("alpha-secret"), rotated)
    assert await answers() == (200, 200, 200)
    async with http.get(result_url) as resp:
        assert (await resp.json())["status"] == 200  # the stored response, as before
    # New tokens are signed with the new secret: not valid under the old one alone.
    restart_with(gw, rotated, security("beta-secret"))
    assert await answers() == (404, 403, 404)


@pytest.mark.parametrize("keep_old", [True, False])
async def test_stored_credentials_replay_after_rotation_only_with_the_old_secret(
    gateway_factory: GatewayFactory, held: HeldBackend, http: aiohttp.ClientSession, keep_old: bool
) -> None:
    """A run written under secret A, its gateway killed mid-attempt, restarted under B:
    with A among previous_secrets the retry carries the client's Authorization; without,
    it goes without it and the log says why (the value is never shown)."""
    before = security("alpha-secret")
    gw = gateway_factory(durable_route(held.url, hold="0s"), extra_yaml=before)
    run_id, location = await accept(http, gw.url("/demo/x"), headers={"Authorization": TOKEN})
    first = lowered(await asyncio.wait_for(held.attempts.get(), 10))
    assert first["authorization"] == TOKEN
    restart_with(
        gw, before, security("beta-secret", ["alpha-secret"] if keep_old else None), kill=True
    )
    await held.answers.put(200)  # attempt 1's answer goes to the killed process
    second = lowered(await asyncio.wait_for(held.attempts.get(), 20))
    assert second["durable-run-id"] == run_id and second["durable-attempt"] == "2"
    await held.answers.put(200)
    if keep_old:
        assert second["authorization"] == TOKEN
        await final(http, location, expect=200)
    else:
        assert "authorization" not in second
        assert "stored credentials Authorization do not open" in gw.logs()
    assert leaks(gw.logs().encode()) == []


# ── file modes ─────────────────────────────────────────────────────────────────


async def test_an_existing_readable_store_is_tightened_with_a_warning(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    db = tmp_path / "durable.db"
    with closing(sqlite3.connect(db)) as conn:  # a file an older version made 0644
        conn.execute("PRAGMA journal_mode = WAL")
    os.chmod(db, 0o644)
    gw = gateway_factory(durable_route("http://127.0.0.1:9"))

    async def private() -> None:
        for suffix, (mode, _) in store_files(db).items():
            assert mode == 0o600, suffix

    await assert_eventually(private)
    assert f"sqlite {db} was open to group or others (mode 0644): now 0600" in gw.logs()
