"""Results → ratios to the direct backend, target checks, a Markdown report and JSON.

Pure: takes the results dict the sections produced; never measures or starts anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

DIRECT: Final = "direct"
MB: Final = 1024 * 1024
RATIO_FIGURES: Final = (
    "c1_p50_ms",
    "c1_p90_ms",
    "c1_p99_ms",
    "rps",
    "p50_ms",
    "p99_ms",
    "system_cpu_ms",
)


@dataclass(frozen=True, slots=True)
class Check:
    """One target of issue 6, 14 or 15 against what this run measured."""

    name: str
    value: float | None
    """None: the section was not run."""
    limit: float
    unit: str
    at_least: bool
    """True: met when value >= limit; False: met when value < limit."""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value < self.limit


def add_ratios(results: dict[str, Any]) -> None:
    """Give every hop's figures a `ratio` to the direct backend's, in place."""
    for hops in results.get("hops", {}).values():
        direct = hops.get(DIRECT)
        if direct is None:
            continue
        for figures in hops.values():
            figures["ratio"] = {
                k: figures[k] / direct[k] if direct.get(k) else None for k in RATIO_FIGURES
            }


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _maybe(fn: Callable[[], float]) -> float | None:
    try:
        return fn()
    except (TypeError, KeyError, ZeroDivisionError):
        return None


def checks(results: dict[str, Any]) -> list[Check]:
    return [
        *_single_node_checks(results),
        *_postgres_checks(results.get("postgres", {})),
        *_tracing_checks(results.get("tracing", {})),
    ]


def _single_node_checks(results: dict[str, Any]) -> list[Check]:
    """Issues 6 and 14."""
    hops: dict[str, Any] = results.get("hops", {})
    h0: dict[str, Any] = hops.get("/0", {})
    h3: dict[str, Any] = hops.get("/3", {})
    store: dict[str, Any] = results.get("store", {})
    memory: dict[str, Any] = results.get("memory", {})
    scale: dict[str, Any] = results.get("scale", {})
    gw3, direct3 = h3.get("gateway", {}), h3.get(DIRECT, {})
    durable_cpu = _maybe(
        lambda: gw3["hop_cpu_ms"] + gw3["backend_cpu_ms"] - direct3["backend_cpu_ms"]
    )
    total_cpu = _maybe(lambda: float(gw3["system_cpu_ms"]))
    runs = _count(memory.get("runs_in_backoff"))
    seeded = _count(scale.get("seeded_runs"))
    sse: dict[str, Any] = results.get("sse_ttfb", {}).get("targets", {})
    big: dict[str, Any] = results.get("big_body", {})
    big_size = _count(big.get("mib"))
    big_durable: dict[str, Any] = big.get("targets", {}).get("gateway", {})
    return [
        Check(
            "0-step: gateway throughput / minimal aiohttp proxy (c=32)",
            _maybe(lambda: h0["gateway"]["rps"] / h0["proxy"]["rps"]),
            0.85,
            "×",
            at_least=True,
        ),
        Check(
            "0-step: gateway p50 added latency over direct (c=1)",
            _maybe(lambda: h0["gateway"]["c1_p50_ms"] - h0[DIRECT]["c1_p50_ms"]),
            0.5,
            "ms",
            at_least=False,
        ),
        Check(
            "3-step: gateway p50 added latency over direct (c=1)",
            _maybe(lambda: gw3["c1_p50_ms"] - direct3["c1_p50_ms"]),
            1.5,
            "ms",
            at_least=False,
        ),
        Check(
            "3-step: CPU per durable request, gateway + backend's sidecar calls (c=32)",
            durable_cpu,
            1.5,
            "ms",
            at_least=False,
            note="" if total_cpu is None else f"whole system incl. handler: {total_cpu:.3f} ms",
        ),
        Check(
            "store: checkpoints/s through the sidecar, async (group commit)",
            _get(store, "async", "checkpoints_per_s"),
            20_000,
            "/s",
            at_least=True,
        ),
        Check(
            "store: checkpoints/s through the sidecar, sync",
            _get(store, "sync", "checkpoints_per_s"),
            2_000,
            "/s",
            at_least=True,
        ),
        Check(
            f"memory: gateway RSS with {runs} in backoff + {runs} suspended",
            memory.get("rss_mb"),
            150,
            "MB",
            at_least=False,
        ),
        Check(
            f"scale: 3-step throughput, {seeded} finished runs vs empty store",
            _maybe(lambda: abs(1 - scale["ratio"]) * 100),
            10,
            "% apart",
            at_least=False,
            note=_maybe_text(lambda: f"seeded/empty = {scale['ratio']:.3f}"),
        ),
        Check(
            "SSE: durable route's time to first byte, p50 added over direct (c=1)",
            _get(sse, "gateway", "added_p50_ms"),
            1.0,
            "ms",
            at_least=False,
            note=_maybe_text(lambda: f"plain route: {sse['gateway-plain']['added_p50_ms']:.3f} ms"),
        ),
        Check(
            f"big body: {big_size} MiB throughput, durable route / plain route",
            big.get("durable_to_plain"),
            0.8,
            "×",
            at_least=True,
            note=_maybe_text(lambda: f"durable peak RSS {big_durable['peak_rss_mb']:.1f} MB"),
        ),
        Check(
            f"big body: gateway RSS growth over idle, {big_size} MiB through a durable route",
            big_durable.get("rss_growth_mb"),
            64,
            "MB",
            at_least=False,
        ),
    ]


def _postgres_checks(pg: dict[str, Any]) -> list[Check]:
    """Issue 15: PostgreSQL against SQLite, and a dead node's runs moving."""
    cpu: dict[str, Any] = pg.get("cpu_3step", {})
    takeover: dict[str, Any] = pg.get("takeover", {})
    trials = takeover.get("trials", "N")
    return [
        Check(
            "postgres: checkpoints/s per node through the sidecar, async (group commit)",
            _get(pg, "checkpoints", "async", "postgresql", "checkpoints_per_s"),
            10_000,
            "/s",
            at_least=True,
            note=_maybe_text(
                lambda: (
                    f"{pg['checkpoints']['async']['ratio']:.2f}× SQLite's"
                    f" {pg['checkpoints']['async']['sqlite']['checkpoints_per_s']:,.0f}/s"
                )
            ),
        ),
        Check(
            "postgres: 3-step gateway CPU per durable request, PostgreSQL / SQLite (c=32)",
            cpu.get("ratio"),
            1.5,
            "×",
            at_least=False,
            note=_maybe_text(
                lambda: (
                    f"{cpu['postgresql']['hop_cpu_ms']:.3f} against"
                    f" {cpu['sqlite']['hop_cpu_ms']:.3f} ms; with the database server's CPU"
                    f" {cpu['ratio_with_server']:.2f}×"
                )
            ),
        ),
        Check(
            f"postgres: takeover after kill -9, p50 of {trials} trials",
            takeover.get("p50_s"),
            3,
            "s",
            at_least=False,
        ),
        Check(
            f"postgres: takeover after kill -9, max of {trials} trials",
            takeover.get("max_s"),
            5,
            "s",
            at_least=False,
        ),
        Check(
            "postgres: a long-poll on another node answers after the run ends, max",
            _get(pg, "wake", "other_node", "max_s"),
            1,
            "s",
            at_least=False,
            note=_maybe_text(
                lambda: (
                    f"p50 {pg['wake']['other_node']['p50_s']:.3f} s; on the node that drove"
                    f" the run {pg['wake']['same_node']['p50_s']:.3f} s"
                )
            ),
        ),
    ]


def _tracing_checks(tracing: dict[str, Any]) -> list[Check]:
    """Issue 17: every run traced and exported, against tracing off."""
    return [_tracing_check(tracing, "0", "/0"), _tracing_check(tracing, "3", "/3")]


def _tracing_check(tracing: dict[str, Any], steps: str, endpoint: str) -> Check:
    return Check(
        f"tracing: {steps}-step throughput, every run traced / tracing off (c=32)",
        _get(tracing, endpoint, "rps_ratio"),
        0.9,
        "×",
        at_least=True,
        note=_maybe_text(lambda: f"gateway CPU per request {tracing[endpoint]['cpu_ratio']:.2f}×"),
    )


def _count(value: int | None) -> str:
    return "N" if value is None else f"{value:,}"


def _maybe_text(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except (TypeError, KeyError):
        return ""


# --- Markdown ---------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _cell(figures: dict[str, Any], key: str, digits: int = 3) -> str:
    value = figures.get(key)
    ratio = (figures.get("ratio") or {}).get(key)
    text = _num(value, digits)
    if ratio is not None and figures.get("name") != DIRECT:
        text += f" ({ratio:.2f}×)"
    return text


def _added(figures: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """p50 latency at c=1 over the direct backend's."""
    mine, base = figures.get("c1_p50_ms"), direct.get("c1_p50_ms")
    return None if mine is None or base is None else float(mine - base)


def _hops_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| endpoint | target | c=1 p50 ms | c=1 p90 ms | c=1 p99 ms | added p50 ms |"
        " c=32 req/s | c=32 p50 ms | c=32 p99 ms | hop CPU s/1k req | backend CPU s/1k req |"
        " system CPU s/1k req | hop peak RSS MB | store writer busy | writer backlog | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for endpoint, hops in results.get("hops", {}).items():
        direct = hops.get(DIRECT, {})
        for name, f in hops.items():
            f = {**f, "name": name}
            added = _added(f, direct) if name != DIRECT else None
            lines.append(
                f"| `{endpoint}` | {name} | {_cell(f, 'c1_p50_ms')} | {_cell(f, 'c1_p90_ms')} |"
                f" {_cell(f, 'c1_p99_ms')} | {_num(added)} | {_cell(f, 'rps', 0)} |"
                f" {_cell(f, 'p50_ms')} | {_cell(f, 'p99_ms')} | {_num(f.get('hop_cpu_ms'))} |"
                f" {_num(f.get('backend_cpu_ms'))} | {_cell(f, 'system_cpu_ms')} |"
                f" {_num(f.get('hop_peak_rss_mb'), 1)} | {_percent(f.get('writer_busy'))} |"
                f" {_num(f.get('writer_backlog'), 0)} | {f.get('errors', 0):.0f} |"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    out = [
        f"# Durable Gateway benchmark, {meta.get('date', '')}",
        "",
        f"{meta.get('machine', '')}; load generator `{meta.get('loadgen', '')}`;"
        f" gateway on {meta.get('gateway_loop', 'asyncio')};"
        f" {meta.get('rounds', 1)} round(s), medians; c=1 for {meta.get('latency_s')} s,"
        f" c={meta.get('connections')} for {meta.get('throughput_s')} s"
        + (" (quick mode: smoke sizes, not figures)" if meta.get("quick") else "")
        + f". Load average at start {meta.get('loadavg_at_start', '?')},"
        f" at end {meta.get('loadavg_at_end', '?')}; commit {meta.get('commit') or '?'}.",
        "",
    ]
    if "hops" in results:
        out += [
            "## Latency and throughput",
            "",
            "Ratios in parentheses are to the direct backend in the same run."
            " CPU seconds per 1,000 requests equal milliseconds per request.",
            "",
            *_hops_table(results),
            "",
        ]
    if "store" in results:
        out += [
            "## Store: checkpoints through the sidecar",
            "",
            "| durability | checkpoints/s | c=32 p50 ms | c=32 p99 ms | gateway CPU µs/checkpoint"
            " | PUT c=1 p50 ms | PUT c=1 p90 ms | PUT c=1 p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, s in results["store"].items():
            out.append(
                f"| {mode} | {_num(s['checkpoints_per_s'], 0)} | {_num(s['c32_p50_ms'])} |"
                f" {_num(s['c32_p99_ms'])} | {_num(s['gateway_cpu_us_per_checkpoint'], 1)} |"
                f" {_num(s['put_c1_p50_ms'])} | {_num(s['put_c1_p90_ms'])} |"
                f" {_num(s['put_c1_p99_ms'])} | {s['errors']:.0f} |"
            )
        out.append("")
    if "scale" in results:
        s = results["scale"]
        out += [
            "## Scale: 3-step throughput against store size",
            "",
            "| store | c=32 req/s |",
            "|---|---:|",
            f"| empty | {_num(s['empty_rps'], 0)} |",
            f"| {s['seeded_runs']:,} finished runs ({_num(s['db_mb'], 0)} MB,"
            f" seeded in {s['seed_seconds']:.0f} s) | {_num(s['seeded_rps'], 0)}"
            f" ({s['ratio']:.2f}×) |",
            "",
        ]
    if "memory" in results:
        m = results["memory"]
        out += [
            "## Memory: runs in flight",
            "",
            "| in backoff | suspended | live in gateway memory | RSS MB | peak RSS MB"
            " | RSS at start MB |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {m['runs_in_backoff']:,} | {m['runs_suspended']:,} |"
            f" {m['runs_live_in_memory']:,.0f} | {_num(m['rss_mb'], 1)} |"
            f" {_num(m['peak_rss_mb'], 1)} | {_num(m['baseline_rss_mb'], 1)} |",
            "",
        ]
    if "postgres" in results:
        out += _postgres_tables(results["postgres"])
    if "sse_ttfb" in results:
        out += _sse_table(results["sse_ttfb"])
    if "big_body" in results:
        out += _big_body_table(results["big_body"])
    if "tracing" in results:
        out += _tracing_table(results["tracing"])
    if "profile" in results:
        out += _profile_table(results["profile"])
    out += ["## Targets", "", "| target | measured | limit | met |", "|---|---:|---:|---|"]
    for c in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not run"}[c["met"]]
        sign = "≥" if c["at_least"] else "<"
        note = f" ({c['note']})" if c["note"] else ""
        out.append(
            f"| {c['name']} | {_num(c['value'])} {c['unit']}{note} |"
            f" {sign} {_num(c['limit'])} {c['unit']} | {met} |"
        )
    return "\n".join(out) + "\n"


def _ratio_cell(value: float | None, base: float | None, digits: int = 3) -> str:
    """A figure with its ratio to `base` (the direct backend's) in parentheses."""
    text = _num(value, digits)
    if value is not None and base:
        text += f" ({value / base:.2f}×)"
    return text


def _postgres_tables(pg: dict[str, Any]) -> list[str]:
    server = pg["server"]
    out = [
        "## PostgreSQL beside SQLite",
        "",
        f"A throwaway PostgreSQL {server['server_version']} server started by the harness"
        f" on loopback, fsync={server['fsync']},"
        f" synchronous_commit={server['synchronous_commit']},"
        f" full_page_writes={server['full_page_writes']}: every commit reaches the disk, as"
        " SQLite's do. Each PostgreSQL figure was measured next to its SQLite counterpart;"
        " ratios are PostgreSQL / SQLite.",
        "",
        "### Checkpoints through the sidecar, one node",
        "",
        "| durability | store | checkpoints/s | c=32 p50 ms | c=32 p99 ms"
        " | gateway CPU µs/checkpoint | PUT c=1 p50 ms | errors | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode, pair in pg["checkpoints"].items():
        for store in ("sqlite", "postgresql"):
            s = pair[store]
            rate = _num(s["checkpoints_per_s"], 0)
            if store == "postgresql" and pair.get("ratio") is not None:
                rate += f" ({pair['ratio']:.2f}×)"
            target = "≥ 10,000/s" if (mode, store) == ("async", "postgresql") else ""
            out.append(
                f"| {mode} | {store} | {rate} | {_num(s['c32_p50_ms'])} |"
                f" {_num(s['c32_p99_ms'])} | {_num(s['gateway_cpu_us_per_checkpoint'], 1)} |"
                f" {_num(s['put_c1_p50_ms'])} | {s['errors']:.0f} | {target} |"
            )
    cpu = pg["cpu_3step"]
    out += [
        "",
        "### CPU per durable 3-step request (c=32, `durability: async`)",
        "",
        "Milliseconds of CPU per request, medians of the rounds; the gateway's own process"
        " (all threads), and on PostgreSQL also the database server's processes.",
        "",
        "| store | c=32 req/s | gateway CPU ms | database server CPU ms | backend CPU ms"
        " | store writer busy | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for store in ("sqlite", "postgresql"):
        f = cpu[store]
        out.append(
            f"| {store} | {_num(f['rps'], 0)} | {_num(f['hop_cpu_ms'])} |"
            f" {_num(f['store_server_cpu_ms'])} | {_num(f['backend_cpu_ms'])} |"
            f" {_percent(f['writer_busy'])} | {f['errors']:.0f} |"
        )
    out += [
        "",
        f"Gateway CPU, PostgreSQL / SQLite: {_num(cpu['ratio'])}× (target < 1.5×);"
        f" gateway + database server / SQLite's gateway: {_num(cpu['ratio_with_server'])}×.",
        "",
    ]
    t = pg["takeover"]
    each = ", ".join(f"{v:.2f}" for v in t["seconds"])
    out += [
        "### Takeover after kill -9",
        "",
        "Two nodes on one database; node A drives a run (one step recorded, its attempt"
        " open in the backend) and is killed with SIGKILL; the time is until the run's next"
        " attempt arrives in the backend from node B (the backend's monotonic clock against"
        " the harness's, one clock on Linux).",
        "",
        "| trials | p50 s | max s | min s | counted by node B | each trial s |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {t['trials']} | {_num(t['p50_s'])} (target < 3) | {_num(t['max_s'])}"
        f" (target < 5) | {_num(t['min_s'])} | {t['taken_over_counted']:.0f} | {each} |",
        "",
    ]
    w = pg.get("wake")
    if w:
        out += [
            "### Wake-ups across nodes",
            "",
            "A run parked on node A is released while its result URL is long-polled; the"
            " time is from the release until the long-poll answers, on node B (the notice"
            " sent in A's committing transaction) and on A itself.",
            "",
            "| long-poll on | p50 s | max s |",
            "|---|---:|---:|",
            f"| the other node | {_num(w['other_node']['p50_s'])} |"
            f" {_num(w['other_node']['max_s'])} (target < 1) |",
            f"| the same node | {_num(w['same_node']['p50_s'])} |"
            f" {_num(w['same_node']['max_s'])} |",
            "",
        ]
    return out


def _sse_table(sse: dict[str, Any]) -> list[str]:
    out = [
        "## Streaming: time to first byte of an SSE stream (c=1)",
        "",
        f"Sequential `POST /sse`, each answered with {sse['events']} events"
        f" {sse['gap_ms']:g} ms apart (chunked, no Content-Length); time from sending the"
        " request to the first body byte of the first event. Ratios are to the direct"
        " backend in the same run.",
        "",
        "| target | TTFB p50 ms | TTFB p90 ms | TTFB p99 ms | added p50 ms"
        " | whole stream p50 ms | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    targets = sse["targets"]
    direct = targets.get(DIRECT, {})
    for name, f in targets.items():
        base = {k: direct.get(k) if name != DIRECT else None for k in direct}
        out.append(
            f"| {name} | {_ratio_cell(f['p50_ms'], base.get('p50_ms'))} |"
            f" {_ratio_cell(f['p90_ms'], base.get('p90_ms'))} |"
            f" {_ratio_cell(f['p99_ms'], base.get('p99_ms'))} | {_num(f['added_p50_ms'])} |"
            f" {_num(f['stream_p50_ms'])} | {f['requests']:,.0f} | {f['errors']:.0f} |"
        )
    return [*out, ""]


def _big_body_table(big: dict[str, Any]) -> list[str]:
    out = [
        f"## Streaming: a {big['mib']:,} MiB body",
        "",
        "One `POST /big` at a time, streamed chunked from one reused buffer and read and"
        " dropped by the client as fast as it comes; a fresh gateway for every transfer."
        " Ratios are to the direct backend in the same run. Stored: the durable run's"
        " writes left the gateway's queue after the transfer (peak RSS is read after).",
        "",
        "| target | MiB/s | seconds | gateway CPU s/GiB | idle RSS MB | peak RSS MB"
        " | RSS growth MB | stored |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    targets = big["targets"]
    direct = targets.get(DIRECT, {}).get("mib_per_s")
    stored = {True: "yes", False: "**no**", None: "–"}
    for name, f in targets.items():
        out.append(
            f"| {name} | {_ratio_cell(f['mib_per_s'], direct if name != DIRECT else None, 0)} |"
            f" {_num(f['seconds'])} | {_num(f['gateway_cpu_s_per_gib'])} |"
            f" {_num(f['idle_rss_mb'], 1)} | {_num(f['peak_rss_mb'], 1)} |"
            f" {_num(f['rss_growth_mb'], 1)} | {stored[f.get('stored')]} |"
        )
    return [*out, ""]


def _tracing_table(tracing: dict[str, Any]) -> list[str]:
    sink = tracing["sink"]
    out = [
        "## Tracing: every run traced against tracing off",
        "",
        "Two gateways side by side, one exporting every run's spans (`sample_ratio: 1.0`)"
        " over OTLP/HTTP to a sink that answers without decoding, at the lowest CPU"
        f" priority: it took {sink['requests']:,} exports, {sink['bytes'] / MB:.1f} MB, and"
        f" {sink['cpu_seconds']:.2f} s of CPU. Ratios are on / off.",
        "",
        "| endpoint | tracing | c=32 req/s | c=32 p50 ms | c=32 p99 ms"
        " | gateway CPU s/1k req | gateway peak RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for endpoint in ("/0", "/3"):
        if endpoint not in tracing:
            continue
        pair = tracing[endpoint]
        for name in ("off", "on"):
            f = pair[name]
            on = name == "on"
            out.append(
                f"| `{endpoint}` | {name} |"
                f" {_ratio_cell(f['rps'], pair['off']['rps'] if on else None, 0)} |"
                f" {_num(f['p50_ms'])} | {_num(f['p99_ms'])} |"
                f" {_ratio_cell(f['hop_cpu_ms'], pair['off']['hop_cpu_ms'] if on else None)} |"
                f" {_num(f['hop_peak_rss_mb'], 1)} | {f['errors']:.0f} |"
            )
    return [*out, ""]


def _share_cells(rows: list[dict[str, Any]], i: int) -> str:
    if i >= len(rows):
        return " | "
    return f"`{rows[i]['function']}` | {rows[i]['share']:.1%}"


def _profile_table(profile: dict[str, Any], rows: int = 12) -> list[str]:
    out = [
        "## Where the gateway's time goes (py-spy, 3-step endpoint, c=32)",
        "",
        f"Shares of {profile['samples']:,} samples over all threads; the event loop"
        " thread and the SQLite thread run side by side.",
        "",
        "| innermost frame (self) | share | project function (inclusive) | share |",
        "|---|---:|---|---:|",
    ]
    own, mine = profile["self"][:rows], profile["own_inclusive"][:rows]
    for i in range(max(len(own), len(mine))):
        a = _share_cells(own, i)
        b = _share_cells(mine, i)
        out.append(f"| {a} | {b} |")
    return [*out, ""]


def finish(results: dict[str, Any], out: Path) -> str:
    """Add ratios and target checks, write `out` (JSON) and `out` with `.md`; the Markdown."""
    add_ratios(results)
    results["targets"] = [{**asdict(c), "met": c.met} for c in checks(results)]
    text = markdown(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    out.with_suffix(".md").write_text(text)
    return text
