"""The admin dashboard: its files over HTTP, and the page as headless Chromium renders it.

The browser is Debian's `chromium` (installed by .ci/run); the page reads the real runs
API of a real gateway, with the admin token passed in the URL fragment.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

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
