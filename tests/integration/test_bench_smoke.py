"""The benchmark harness still runs: `python -m bench.run --quick` end to end, every section.

Smoke only: quick sizes prove the harness works, never how fast the gateway is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import ROOT

HOPS = ("direct", "proxy", "gateway", "gateway-plain")


def run_bench(tmp_path: Path, *args: str, within: float = 100) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *args]
    cmd += ["--workdir", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=within)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    data: dict[str, Any] = orjson.loads(out.read_bytes())
    return data, out.with_suffix(".md").read_text()


def positive(figures: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert figures[key] > 0, f"{key} = {figures[key]} in {figures}"


@pytest.mark.slow
@pytest.mark.timeout(190)
def test_quick_run_with_the_python_load_generator(tmp_path: Path) -> None:
    data, text = run_bench(tmp_path, "--loadgen", "python", within=170)
    assert data["meta"]["loadgen"] == "python"
    for endpoint in ("/0", "/3"):
        hops = data["hops"][endpoint]
        for name in HOPS:
            f = hops[name]
            positive(f, "c1_p50_ms", "c1_p99_ms", "rps", "p50_ms", "p99_ms", "requests")
            assert f["c1_p50_ms"] <= f["c1_p90_ms"] <= f["c1_p99_ms"]
            assert f["errors"] == 0
            assert f["ratio"]["rps"] == pytest.approx(f["rps"] / hops["direct"]["rps"])
        positive(hops["gateway"], "hop_cpu_ms", "hop_peak_rss_mb", "system_cpu_ms")
        assert hops["direct"]["hop_cpu_ms"] is None
    # Every durable 3-step request wrote its steps through the sidecar: the backend
    # spends more CPU per request behind the gateway than when called directly.
    h3 = data["hops"]["/3"]
    assert h3["gateway"]["backend_cpu_ms"] > h3["direct"]["backend_cpu_ms"]

    for mode in ("async", "sync"):
        store = data["store"][mode]
        positive(store, "checkpoints_per_s", "put_c1_p50_ms", "gateway_cpu_us_per_checkpoint")
        assert store["errors"] == 0
        assert store["recorded"] >= store["checkpoints"] > 0  # the steps really were stored

    scale = data["scale"]
    assert scale["seeded_runs"] == 10_000
    positive(scale, "empty_rps", "seeded_rps", "ratio", "db_mb")

    memory = data["memory"]
    assert memory["runs_in_backoff"] == memory["runs_suspended"] == 200
    positive(memory, "rss_mb", "peak_rss_mb", "baseline_rss_mb")

    streamed(data, mib=16)
    on_postgres(data["postgres"], trials=2)

    assert {t["name"].split(":")[0] for t in data["targets"]} >= {
        "0-step",
        "3-step",
        "store",
        "postgres",
        "SSE",
        "big body",
    }
    assert all(t["value"] is not None for t in data["targets"])
    assert "| `/3` | gateway |" in text and "## Targets" in text
    assert "## Streaming: a 16 MiB body" in text
    assert "## PostgreSQL beside SQLite" in text and "| async | postgresql |" in text


def on_postgres(pg: dict[str, Any], trials: int) -> None:
    """Every PostgreSQL figure came back beside its SQLite one, from a server that
    syncs its commits, and every killed node's run moved to the other node."""
    assert pg["server"]["fsync"] == pg["server"]["synchronous_commit"] == "on"
    for mode in ("async", "sync"):
        for store in ("sqlite", "postgresql"):
            checkpoints = pg["checkpoints"][mode][store]
            positive(checkpoints, "checkpoints_per_s", "put_c1_p50_ms")
            assert checkpoints["errors"] == 0
            assert checkpoints["recorded"] >= checkpoints["checkpoints"] > 0
        positive(pg["checkpoints"][mode], "ratio")
    cpu = pg["cpu_3step"]
    for store in ("sqlite", "postgresql"):
        positive(cpu[store], "rps", "hop_cpu_ms", "backend_cpu_ms")
        assert cpu[store]["errors"] == 0
    positive(cpu["postgresql"], "store_server_cpu_ms")  # the server's processes were found
    assert cpu["sqlite"]["store_server_cpu_ms"] is None
    assert cpu["ratio"] == pytest.approx(
        cpu["postgresql"]["hop_cpu_ms"] / cpu["sqlite"]["hop_cpu_ms"]
    )
    assert cpu["ratio_with_server"] > cpu["ratio"]
    takeover = pg["takeover"]
    assert takeover["trials"] == len(takeover["seconds"]) == trials
    assert takeover["taken_over_counted"] == trials  # by node B, as a dead node's runs
    assert 0 < takeover["min_s"] <= takeover["p50_s"] <= takeover["max_s"]


def streamed(data: dict[str, Any], mib: int) -> None:
    """The two streaming sections came back whole: every SSE stream and every big body
    through each target, the durable body written to the store."""
    sse = data["sse_ttfb"]["targets"]
    assert set(sse) == {"direct", "gateway", "gateway-plain"}
    # The backend sends its later events at least `gap_ms` apart, each after the first:
    # a hop that held the stream back would deliver the first byte with the last.
    later = (data["sse_ttfb"]["events"] - 1) * data["sse_ttfb"]["gap_ms"]
    for name, f in sse.items():
        assert f["requests"] == 20 and f["errors"] == 0, (name, f)
        assert 0 < f["p50_ms"] <= f["p90_ms"] <= f["p99_ms"]
        assert f["stream_p50_ms"] - f["p50_ms"] >= later * 0.99, (name, f)
    added = sse["gateway"]["added_p50_ms"]
    assert added == pytest.approx(sse["gateway"]["p50_ms"] - sse["direct"]["p50_ms"])

    big = data["big_body"]
    assert big["mib"] == mib
    targets = big["targets"]
    assert list(targets) == ["direct", "gateway-plain", "gateway"]
    for f in targets.values():
        positive(f, "mib_per_s", "seconds")
        assert f["chunked"] is True
    for name in ("gateway-plain", "gateway"):
        positive(targets[name], "idle_rss_mb")
        assert targets[name]["gateway_cpu_s_per_gib"] >= 0  # a small body may take < 1 tick
        assert targets[name]["peak_rss_mb"] >= targets[name]["idle_rss_mb"]
    assert targets["gateway"]["stored"] is True
    plain, durable = targets["gateway-plain"]["mib_per_s"], targets["gateway"]["mib_per_s"]
    assert big["durable_to_plain"] == pytest.approx(durable / plain)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_quick_run_with_wrk(tmp_path: Path) -> None:
    """wrk's two script shapes: one static request (latency), rotating step ids (store)."""
    data, _ = run_bench(tmp_path, "--loadgen", "wrk", "--only", "latency,store", "--no-nginx")
    assert data["meta"]["loadgen"] == "wrk"
    for endpoint in ("/0", "/3"):
        for name in HOPS:
            f = data["hops"][endpoint][name]
            positive(f, "c1_p50_ms", "c1_requests")
            assert f["rps"] is None  # throughput was left out
    for mode in ("async", "sync"):
        store = data["store"][mode]
        assert store["errors"] == 0
        assert store["recorded"] >= store["checkpoints"] > 0
    assert "memory" not in data and "scale" not in data


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_streaming_sections_alone(tmp_path: Path) -> None:
    """`--only sse_ttfb,big_body` runs those two and nothing else, at the size asked."""
    data, text = run_bench(tmp_path, "--only", "sse_ttfb,big_body", "--big-body-mib", "4")
    streamed(data, mib=4)
    assert not {"hops", "store", "scale", "memory"} & set(data)
    assert "## Streaming: a 4 MiB body" in text
    assert "| gateway-plain |" in text
    names = {t["name"]: t for t in data["targets"]}
    assert names["big body: 4 MiB throughput, durable route / plain route"]["value"] > 0
    sse = "SSE: durable route's time to first byte, p50 added over direct (c=1)"
    assert names[sse]["value"] == data["sse_ttfb"]["targets"]["gateway"]["added_p50_ms"]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_tracing_comparison_alone(tmp_path: Path) -> None:
    """`--only tracing`: both endpoints through a gateway with tracing off and one with
    every run traced, the ratios of the same run, and the sink's count of exports."""
    data, text = run_bench(tmp_path, "--only", "tracing", "--loadgen", "python", within=80)
    tracing = data["tracing"]
    assert set(data) == {"meta", "tracing", "targets"}
    for endpoint in ("/0", "/3"):
        pair = tracing[endpoint]
        for name in ("off", "on"):
            positive(pair[name], "rps", "requests", "hop_cpu_ms", "hop_peak_rss_mb")
            assert pair[name]["errors"] == 0
        assert pair["rps_ratio"] == pytest.approx(pair["on"]["rps"] / pair["off"]["rps"])
        assert pair["cpu_ratio"] == pytest.approx(
            pair["on"]["hop_cpu_ms"] / pair["off"]["hop_cpu_ms"]
        )
    assert set(tracing["sink"]) == {"requests", "bytes", "cpu_seconds"}
    assert tracing["sink"]["requests"] > 0 and tracing["sink"]["bytes"] > 0
    names = {t["name"]: t for t in data["targets"]}
    for steps, endpoint in (("0", "/0"), ("3", "/3")):
        check = names[f"tracing: {steps}-step throughput, every run traced / tracing off (c=32)"]
        assert check["value"] == tracing[endpoint]["rps_ratio"]
    assert "## Tracing: every run traced against tracing off" in text
    assert "| `/3` | on |" in text


def table_rows(module: str, *args: str) -> list[list[str]]:
    """Run `python -m <module> <args>` and answer the cells of the table it prints last."""
    cmd = [sys.executable, "-m", module, *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]


@pytest.mark.timeout(60)
def test_the_client_comparison_runs() -> None:
    """`python -m bench.clients` sends through both clients and prints a figure for each."""
    rows = table_rows("bench.clients", "--requests", "320")
    assert [row[0] for row in rows] == ["aiohttp", "upstream.Pool"]
    for _, rate, cpu in rows:
        assert float(rate.replace(",", "")) > 0 and float(cpu) > 0


@pytest.mark.timeout(60)
def test_the_run_id_comparison_runs() -> None:
    """`python -m bench.run_ids` writes runs under both id layouts and prints a row each."""
    rows = table_rows("bench.run_ids", "--runs", "3200")
    assert [row[0] for row in rows] == ["random", "time-ordered"]
    for _, *stretches in rows:
        assert len(stretches) == 4 and all(float(cpu) > 0 for cpu in stretches)


@pytest.mark.timeout(60)
def test_the_event_matching_comparison_runs() -> None:
    """`python -m bench.events` posts events both ways and prints a row for each."""
    rows = table_rows("bench.events", "--waits", "300", "--rounds", "2")
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("fits one", "scan", "1"),
        ("fits one", "index", "1"),
        ("fits none", "scan", "0"),
        ("fits none", "index", "0"),
        ("fits all", "scan", "300"),
        ("fits all", "index", "300"),
    ]
    assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in rows)


@pytest.mark.timeout(60)
def test_the_build_comparison_runs() -> None:
    """`python -m bench.compare` runs two gateways (here this build twice) and prints the
    CPU each spent per request, durable and plain, with the durable path's own ratio."""
    rows = table_rows("bench.compare", str(ROOT), "--rounds", "1", "--duration", "1")
    assert [row[0] for row in rows] == ["/0", "/plain/0"]
    for path, this, other, ratio, own in rows:
        assert float(this) > 0 and float(other) > 0 and float(ratio) > 0
        assert (own == "") == (path == "/plain/0")
