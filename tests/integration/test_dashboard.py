"""The admin dashboard: its files over HTTP, and the page as headless Chromium renders it.

The browser is Debian's `chromium` (installed by .ci/run); the page reads the real runs
API of a real gateway, with the admin token passed in the URL fragment.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import shutil
import time
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image
from yarl import URL

from gateway.http import dashboard
from gateway.http.problems import problems_middleware
from tests.conftest import Backend, GatewayFactory, durable_route
from tests.helpers import assert_eventually, get_json

TOKEN = "secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's `chromium` is not installed (.ci/run installs it)"
)
_profiles = itertools.count()


# ── the files, over HTTP ───────────────────────────────────────────────────


@pytest.fixture
async def dashboard_url() -> AsyncIterator[str]:
    app = web.Application(middlewares=[problems_middleware])
    app.add_routes(dashboard.routes())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html", b'<script src="static/dashboard.js"'),
        ("/static/dashboard.js", "text/javascript", b'"use strict";'),
        ("/static/dashboard.css", "text/css", b".timeline"),
    ],
)
async def test_serves_page_and_assets(
    dashboard_url: str, http: aiohttp.ClientSession, path: str, content_type: str, marker: bytes
) -> None:
    async with http.get(dashboard_url + path) as resp:
        assert resp.status == 200
        assert resp.content_type == content_type
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert marker in await resp.read()


@pytest.mark.parametrize(
    "path",
    [
        "/static/dashboard.py",
        "/static/dashboard.html",  # the page lives at / only
        "/static/..%2Fdashboard.py",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2E%2E",
        "/static/",
        "/static/DASHBOARD.JS",
    ],
)
async def test_serves_only_known_names(
    dashboard_url: str, http: aiohttp.ClientSession, path: str
) -> None:
    # encoded=True: send the path as written, without the client resolving the dots.
    async with http.get(URL(dashboard_url + path, encoded=True)) as resp:
        assert resp.status == 404
        assert b"import" not in await resp.read()


# ── the page, in a browser ─────────────────────────────────────────────────


class Dom(HTMLParser):
    """Every start tag of a dumped DOM, with its attributes, and its text; enough to check
    what rendered."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []
        self.texts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"": tag} | {k: v or "" for k, v in attrs})

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def by_id(self, element_id: str) -> dict[str, str]:
        return next(e for e in self.elements if e.get("id") == element_id)

    def values(self, attr: str) -> list[str]:
        return [e[attr] for e in self.elements if attr in e]

    def with_class(self, cls: str) -> list[dict[str, str]]:
        return [e for e in self.elements if cls in e.get("class", "").split()]


def percent(element: dict[str, str], prop: str) -> float:
    """A `left: 12.5%`-style property of an element's inline style, in percent."""
    match = re.search(rf"(?:^|;)\s*{prop}:\s*([\d.]+)%", element.get("style", ""))
    assert match is not None, element
    return float(match.group(1))


async def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on one URL; answers its stdout."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{next(_profiles)}"  # a fresh profile per run
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=45)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def dump_dom(tmp_path: Path, url: str) -> Dom:
    return Dom(await chromium(tmp_path, url, "--dump-dom"))


async def make_runs(gw_url: str, http: aiohttp.ClientSession) -> tuple[str, str]:
    """A clean run and one whose step-2 fails on the first attempt (the backend records
    the failed try) and completes on the second; answers their ids.

    Each step's work takes a while, so the attempts' bars and the steps' durations are
    wide enough to see.
    """
    ids = []
    for query in ("n=3", "n=3&raise_at=2&work_ms=150"):
        async with http.post(gw_url + f"/demo/steps?{query}") as resp:
            assert resp.status == 200, await resp.text()
            ids.append(resp.headers["Durable-Run-Id"])
    return ids[0], ids[1]


def rgb_counts(image: Image.Image) -> list[tuple[int, tuple[int, ...]]]:
    """(pixel count, colour) for every distinct colour of an RGB image."""
    return [(n, c) for n, c in image.getcolors(maxcolors=1 << 24) or [] if isinstance(c, tuple)]


def colour_pixels(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within `tolerance` of `rgb` on every channel."""
    return sum(
        n
        for n, colour in rgb_counts(image)
        if all(abs(a - b) <= tolerance for a, b in zip(colour, rgb, strict=True))
    )


# ── the page on a stand-in runs API: exact values ─────────────────────────

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_URL = f"http://jaeger.test:16686/trace/{TRACE_ID}"
HOSTILE = '<img src=x onerror="document.title=1">'
"""A step id the page must show as text, never as markup."""


def timed_run(run_id: str, start: float, trace_url: str | None) -> dict[str, Any]:
    """A finished run of ten seconds as `GET /v1/runs/{id}` gives it once backends report
    their steps' timing: attempt 1 (0-4 s, a 500) and attempt 2 (5-10 s, a 200).

    Times are offsets from `start`, so each one is its percentage of the axis divided by 10.
    """

    def at(offset: float) -> float:
        return start + offset

    def step(step_id: str, attempt: int, created: float, **extra: Any) -> dict[str, Any]:
        timing = {"started_at": None, "duration_ms": None, "timing": None} | extra
        return {
            "step_id": step_id,
            "completed": True,
            "attempt": attempt,
            "created_at": at(created),
            "output_bytes": 12,
            **timing,
            "errors": [],
        }

    charge = step("charge", 2, 8.0, started_at=at(6.0), duration_ms=1500.0, timing="backend")
    charge["errors"] = [
        {
            "attempt": 1,
            "message": "provider timeout",
            "created_at": at(3.6),
            "started_at": at(3.0),
            "duration_ms": 400.0,
            "timing": "backend",
        }
    ]
    return {
        "run_id": run_id,
        "route": "demo",
        "status": "succeeded",
        "attempt": 2,
        "created_at": start,
        "updated_at": at(10.0),
        "finished_at": at(10.0),
        "wake_at": None,
        "waiting": None,
        "owner": None,
        "trace_id": TRACE_ID,
        "trace_url": trace_url,
        "request": {"method": "POST", "path": "/demo/x", "body_bytes": 2, "headers": []},
        "attempts": [
            {
                "attempt": 1,
                "started_at": at(0.0),
                "ended_at": at(4.0),
                "outcome": "response",
                "status": 500,
                "detail": None,
            },
            {
                "attempt": 2,
                "started_at": at(5.0),
                "ended_at": at(10.0),
                "outcome": "response",
                "status": 200,
                "detail": None,
            },
        ],
        "steps": [
            step(HOSTILE, 1, 2.0, started_at=at(1.0), duration_ms=500.0, timing="backend"),
            charge,
            step("legacy", 2, 9.0),  # an older backend: no timing, placed by its record
            step("only-start", 2, 9.5, started_at=at(8.5)),  # placed by its start
        ],
        "step_errors_dropped": 0,
        "suspension": None,
        "response": {
            "status": 200,
            "body_bytes": 2,
            "body_kept": True,
            "content_type": "application/json",
        },
        "stream": None,
    }


@pytest.fixture
async def stand_in_admin() -> AsyncIterator[tuple[str, dict[str, dict[str, Any]]]]:
    """The real dashboard files beside a stand-in of the runs API that answers the runs
    a test puts in its dict: the page's own logic, fed exact values."""
    runs: dict[str, dict[str, Any]] = {}

    async def list_runs(request: web.Request) -> web.Response:
        keys = ("run_id", "route", "status", "attempt", "created_at", "finished_at")
        items = [{k: run[k] for k in keys} for run in runs.values()]
        return web.json_response({"runs": items, "next_cursor": None})

    async def get_run(request: web.Request) -> web.Response:
        return web.json_response(runs[request.match_info["run_id"]])

    async def list_routes(request: web.Request) -> web.Response:
        return web.json_response({"routes": [{"name": "demo", "path": "/demo/*"}]})

    app = web.Application(middlewares=[problems_middleware])
    app.add_routes(dashboard.routes())
    app.router.add_get("/v1/routes", list_routes)
    app.router.add_get("/v1/runs", list_runs)
    app.router.add_get("/v1/runs/{run_id}", get_run)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), runs
    await server.close()


@needs_chromium
async def test_dashboard_places_steps_by_their_timing_and_links_the_trace(
    stand_in_admin: tuple[str, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    url, runs = stand_in_admin
    start = time.time() - 60
    runs["timed"] = timed_run("timed", start, TRACE_URL)
    dom = await dump_dom(tmp_path, f"{url}/#run=timed")
    assert dom.values("data-step-id") == [HOSTILE, "charge", "legacy", "only-start"]
    assert "img" not in [e[""] for e in dom.elements] and HOSTILE in dom.texts

    # Each band is a try's work, from the start its backend reported; its mark at its end.
    bands = dom.with_class("step-span")
    assert [(percent(b, "left"), percent(b, "width")) for b in bands] == [
        pytest.approx((10, 5), abs=0.01),
        pytest.approx((60, 15), abs=0.01),
    ]
    marks = [percent(m, "left") for m in dom.with_class("step-mark")]
    assert marks == pytest.approx([15, 75, 90, 85], abs=0.01)
    [band] = dom.with_class("step-error-span")
    assert (percent(band, "left"), percent(band, "width")) == pytest.approx((30, 4), abs=0.01)
    [ring] = dom.with_class("step-error-mark")
    assert percent(ring, "left") == pytest.approx(34, abs=0.01)
    # The durations, on the timeline and in the tables; nothing for a step without one.
    labels = dom.with_class("took-label")
    assert [label["data-step"] for label in labels] == [HOSTILE, "charge", "charge"]
    assert not any("hidden" in label for label in labels)  # room for each on a wide page
    # Timeline labels (attempt 1's lane, then 2's), then the steps and failed tries tables.
    shown = ("500 ms", "400 ms", "1.5 s")
    assert [t for t in dom.texts if t in shown] == [*shown, "500 ms", "1.5 s", "400 ms"]
    tips = [m["title"] for m in dom.with_class("step-mark")]
    assert "took 500 ms" in tips[0] and "took 1.5 s" in tips[1]
    assert "took" not in tips[2] and "took" not in tips[3]

    [link] = [e for e in dom.elements if e[""] == "a"]
    assert link["href"] == TRACE_URL
    assert (link["target"], link["rel"]) == ("_blank", "noopener")
    assert "Open trace" in dom.texts and TRACE_ID in dom.texts


@needs_chromium
@pytest.mark.parametrize("trace_url", [None, "javascript:alert(1)", "data:text/html,hi"])
async def test_dashboard_links_only_a_web_trace_url(
    stand_in_admin: tuple[str, dict[str, dict[str, Any]]], tmp_path: Path, trace_url: str | None
) -> None:
    url, runs = stand_in_admin
    runs["run"] = timed_run("run", time.time() - 60, trace_url)
    html = await chromium(tmp_path, f"{url}/#run=run", "--dump-dom")
    dom = Dom(html)
    assert dom.values("data-step-id")  # the run rendered
    assert [e for e in dom.elements if e[""] == "a"] == []
    assert "Open trace" not in dom.texts
    assert TRACE_ID in dom.texts


@needs_chromium
async def test_dashboard_hides_duration_labels_that_would_overlap(
    stand_in_admin: tuple[str, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    url, runs = stand_in_admin
    run = timed_run("busy", time.time() - 60, None)
    first, second = run["steps"][:2]
    first.update(started_at=run["created_at"] + 1.0, duration_ms=1000.0)
    second.update(attempt=1, started_at=run["created_at"] + 2.0, duration_ms=50.0, errors=[])
    run["steps"] = [first, second]
    runs["busy"] = run
    dom = await dump_dom(tmp_path, f"{url}/#run=busy")
    # Marks at 20% and 20.5% of the axis: the earlier try keeps its label.
    assert [percent(m, "left") for m in dom.with_class("step-mark")] == pytest.approx([20, 20.5])
    kept, hidden = dom.with_class("took-label")
    assert "hidden" not in kept and "hidden" in hidden
    assert "took 50 ms" in hidden["title"]  # still in its tooltip, and in the steps table:
    assert dom.texts.count("50 ms") == 2  # there and in the hidden label


# ── the page on a real gateway ─────────────────────────────────────────────


@needs_chromium
@pytest.mark.both_stores
async def test_dashboard_renders_runs_and_timeline(
    gateway_factory: GatewayFactory, backend: Backend, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, retry="{initial_backoff: 50ms}"),
        extra_yaml=f"security:\n  admin_token: {TOKEN}\n",
    )
    clean, retried = await make_runs(gw.ingress, http)

    async def recorded() -> None:
        """Writes are group-committed after the client's answer: wait until the API has them."""
        detail = await get_json(http, f"{gw.admin}/v1/runs/{retried}", headers=AUTH)
        assert detail["status"] == "succeeded"
        assert [a["attempt"] for a in detail["attempts"]] == [1, 2]
        assert all(a["ended_at"] is not None for a in detail["attempts"])
        assert len(detail["steps"]) == 3
        assert [len(s["errors"]) for s in detail["steps"]] == [0, 1, 0]
        listed = await get_json(http, f"{gw.admin}/v1/runs", headers=AUTH)
        assert {r["status"] for r in listed["runs"]} == {"succeeded"}

    await assert_eventually(recorded)

    # The page itself holds no data, so it is served without the token.
    async with http.get(gw.admin + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"

    url = f"{gw.admin}/#token={TOKEN}&run={retried}"
    dom = await dump_dom(tmp_path, url)
    assert "hidden" in dom.by_id("login")
    assert "hidden" not in dom.by_id("app")
    assert set(dom.values("data-run-id")) == {clean, retried}
    assert "hidden" not in dom.by_id("detail")
    assert dom.values("data-step-id") == ["step-1", "step-2", "step-3"]
    # One bar per attempt: the first failed with a 500 (red), the second answered 200 (green).
    bars = [e["class"] for e in dom.with_class("bar")]
    assert bars == ["bar o-failed", "bar o-ok"]
    assert len(dom.with_class("step-mark")) == 3
    # The failed try: a ring on attempt 1's bar, its message in the tooltip, and a band
    # for each try's duration that ends at its mark.
    [ring] = dom.with_class("step-error-mark")
    assert "step-2 failed" in ring["title"] and "step-2 failed on attempt 1" in ring["title"]
    assert len(dom.with_class("step-span")) == 3
    [band] = dom.with_class("step-error-span")
    assert "took" in band["title"]
    assert abs(percent(band, "left") + percent(band, "width") - percent(ring, "left")) < 0.1
    assert percent(band, "width") > 1  # 150 ms of work in a run of about a second
    assert dom.values("data-error-step") == ["step-2"]
    assert dom.values("data-error-attempt") == ["1"]
    assert "step-2 failed on attempt 1" in dom.texts

    png = tmp_path / "dashboard.png"
    await chromium(tmp_path, url, f"--screenshot={png}")
    with Image.open(png) as shot:
        image = shot.convert("RGB")
    assert image.size == (1280, 900)
    colours = rgb_counts(image)
    assert len(colours) > 200, "the screenshot is nearly flat: did the page render?"
    white = sum(n for n, c in colours if min(c) >= 245)
    assert white < 0.8 * image.width * image.height
    # The attempt bars are drawn in the CSS's --bad and --ok colours; the legend's and the
    # attempts table's swatches alone are a few hundred pixels, a bar is thousands.
    assert colour_pixels(image, (0xDC, 0x26, 0x26)) > 1000
    assert colour_pixels(image, (0x16, 0xA3, 0x4A)) > 1000
    # The failed try's duration band, in its own dark red.
    assert colour_pixels(image, (0x7F, 0x1D, 0x1D), tolerance=8) > 100


UI_URL = "http://jaeger.test:16686/trace/{trace_id}"


def shown(ms: float) -> str:
    """A duration under a minute as the page writes it: `duration(ms / 1000)` in
    dashboard.js, with the same float steps (`Math.round` and `toFixed` take halves up)."""
    seconds = ms / 1000
    if seconds < 1:
        return f"{js_round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{Decimal(seconds).quantize(Decimal('0.1'), ROUND_HALF_UP)} s"
    return f"{js_round(seconds)} s"


def js_round(value: float) -> int:
    whole = math.floor(value)
    return whole + 1 if value - whole >= 0.5 else whole


@needs_chromium
async def test_dashboard_shows_reported_durations_and_the_trace_link(
    gateway_factory: GatewayFactory, backend: Backend, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = gateway_factory(
        durable_route(backend.url, retry="{initial_backoff: 50ms}"),
        extra_yaml=f"security:\n  admin_token: {TOKEN}\ntracing:\n  ui_url: {UI_URL}\n",
    )
    async with http.post(gw.ingress + "/demo/steps?n=3&raise_at=2&work_ms=150") as resp:
        assert resp.status == 200, await resp.text()
        run_id = resp.headers["Durable-Run-Id"]

    async def recorded() -> dict[str, Any]:
        detail: dict[str, Any] = await get_json(http, f"{gw.admin}/v1/runs/{run_id}", headers=AUTH)
        assert detail["trace_url"] is not None, "the config sets tracing.ui_url"
        assert detail["finished_at"] is not None
        assert all(a["ended_at"] is not None for a in detail["attempts"])
        assert [s["started_at"] is not None for s in detail["steps"]] == [True, True, True]
        return detail

    detail = await assert_eventually(recorded)
    trace_url = UI_URL.replace("{trace_id}", detail["trace_id"])
    assert detail["trace_url"] == trace_url

    dom = await dump_dom(tmp_path, f"{gw.admin}/#token={TOKEN}&run={run_id}")
    assert dom.values("data-step-id") == ["step-1", "step-2", "step-3"]
    [link] = [e for e in dom.elements if e[""] == "a"]
    assert (link["href"], link["target"], link["rel"]) == (trace_url, "_blank", "noopener")
    assert "Open trace" in dom.texts and detail["trace_id"] in dom.texts
    # Each step's band runs from the start its backend reported for the time it took, and
    # ends at the step's mark, the duration beside it.
    marks = dom.with_class("step-mark")
    bands = dom.with_class("step-span")
    assert len(marks) == len(bands) == 3
    for mark, band, step in zip(marks, bands, detail["steps"], strict=True):
        assert abs(percent(band, "left") + percent(band, "width") - percent(mark, "left")) < 0.1
        assert f"took {shown(step['duration_ms'])}" in mark["title"]
    labelled = [label["data-step"] for label in dom.with_class("took-label")]
    assert labelled.count("step-1") == labelled.count("step-3") == 1
    for step in detail["steps"]:
        assert dom.texts.count(shown(step["duration_ms"])) >= 1


@needs_chromium
async def test_dashboard_asks_for_the_token(
    gateway_factory: GatewayFactory, backend: Backend, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = gateway_factory(
        durable_route(backend.url), extra_yaml=f"security:\n  admin_token: {TOKEN}\n"
    )
    await make_runs(gw.ingress, http)
    async with http.get(gw.admin + "/v1/runs") as resp:
        assert resp.status == 401

    for fragment, message in (("", ""), ("#token=wrong", "That token was not accepted.")):
        html = await chromium(tmp_path, gw.admin + "/" + fragment, "--dump-dom")
        dom = Dom(html)
        assert "hidden" not in dom.by_id("login")
        assert dom.by_id("token-form")[""] == "form"
        assert dom.by_id("token-input")["type"] == "password"
        assert "hidden" in dom.by_id("app")
        assert dom.values("data-run-id") == []
        assert message in html


@needs_chromium
async def test_dashboard_shows_request_headers_with_credentials_redacted(
    gateway_factory: GatewayFactory, backend: Backend, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = gateway_factory(
        durable_route(backend.url),
        extra_yaml=f"security:\n  admin_token: {TOKEN}\n  sensitive_headers: [X-Api-Key]\n",
    )
    sent = {"Authorization": "Bearer tok-dash-93e1", "X-Api-Key": "key-dash-27b4", "X-Tag": "t-9"}
    async with http.post(gw.ingress + "/demo/steps?n=1", headers=sent) as resp:
        assert resp.status == 200, await resp.text()
        run_id = resp.headers["Durable-Run-Id"]

    async def recorded() -> None:
        detail = await get_json(http, f"{gw.admin}/v1/runs/{run_id}", headers=AUTH)
        assert detail["status"] == "succeeded"

    await assert_eventually(recorded)
    html = await chromium(tmp_path, f"{gw.admin}/#token={TOKEN}&run={run_id}", "--dump-dom")
    dom = Dom(html)
    assert {"authorization", "x-api-key", "x-tag"} <= set(dom.values("data-header"))
    assert dom.texts.count("[redacted]") == 2
    assert "t-9" in dom.texts
    assert "tok-dash" not in html and "key-dash" not in html
