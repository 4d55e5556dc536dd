"""config.reload: what a reloaded file puts in force and what it leaves for a restart."""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.config.loader import load_config_text
from gateway.config.reload import plan

BASE = """\
server: {ingress: 127.0.0.1:8000, sidecar: 127.0.0.1:8001, admin: 127.0.0.1:8002}
storage: {url: 'sqlite:///gw.db'}
security: {secret: s1, admin_token: a1}
routes:
  - {name: a, match: /a, upstream: 'http://127.0.0.1:3000'}
  - {name: b, match: /b, upstream: 'http://127.0.0.1:3000'}
  - {name: c, match: /c, upstream: 'http://127.0.0.1:3000'}
"""


def config(text: str, source: str = "gw.yaml") -> GatewayConfig:
    return load_config_text(text, source=source, env={})


def test_an_unchanged_file_changes_nothing() -> None:
    done = plan(config(BASE), config(BASE))
    assert done.config == config(BASE)
    assert done.summary() == {
        "source": "gw.yaml",
        "routes": {"added": [], "removed": [], "changed": [], "unchanged": 3, "reordered": False},
        "admin_token_changed": False,
        "needs_restart": [],
    }
    assert done.describe() == "routes: 0 added, 0 removed, 0 changed, 3 unchanged"


def test_routes_added_removed_changed_and_reordered_by_name() -> None:
    new = BASE.replace("  - {name: a, match: /a, upstream: 'http://127.0.0.1:3000'}\n", "")
    new = new.replace("match: /b,", "match: /b, hold: 1s,")
    new += "  - {name: d, match: /d, upstream: 'http://127.0.0.1:3000'}\n"
    done = plan(config(BASE), config(new))
    assert (done.added, done.removed, done.changed) == (("d",), ("a",), ("b",))
    assert (done.unchanged, done.reordered) == (1, False)
    assert [r.name for r in done.config.routes] == ["b", "c", "d"]
    assert done.config.routes[0].settings.hold == 1.0
    lines = BASE.splitlines(keepends=True)
    swapped = "".join(lines[:-2] + [lines[-1], lines[-2]])  # c before b: precedence may move
    assert plan(config(BASE), config(swapped)).reordered


def test_defaults_reach_every_route_they_change() -> None:
    done = plan(config(BASE), config(BASE.replace("routes:\n", "defaults: {hold: 3s}\nroutes:\n")))
    assert done.changed == ("a", "b", "c")
    assert done.config.defaults.hold == 3.0


def test_the_admin_token_is_reloaded_and_the_rest_kept_as_started() -> None:
    running = config(BASE)
    new = (
        BASE.replace("8000", "9000")
        .replace("gw.db", "other.db")
        .replace("secret: s1", "secret: s2")
        .replace("admin_token: a1", "admin_token: a2")
        .replace("routes:\n", "cluster: {node_id: n2, lease: 30s}\nroutes:\n")
    )
    done = plan(running, config(new, source="elsewhere.yaml"))
    kept = done.config
    assert (kept.server, kept.storage, kept.cluster) == (
        running.server,
        running.storage,
        running.cluster,
    )
    assert (kept.security.secret, kept.security.admin_token) == ("s1", "a2")
    assert kept.source == "gw.yaml"  # a reload always reads the file it started with
    assert done.admin_token_changed
    assert done.needs_restart == (
        "server.ingress",
        "storage.url",
        "cluster.node_id",
        "cluster.lease",
        "security.secret",
    )
    assert done.describe().endswith("3 unchanged; admin token changed")


def test_tracing_is_kept_as_started_and_named_for_a_restart() -> None:
    running = config(BASE)
    traced = BASE.replace(
        "routes:\n",
        "tracing: {otlp_endpoint: 'http://127.0.0.1:4318', sample_ratio: 0.5}\nroutes:\n",
    )
    done = plan(running, config(traced))
    assert done.config.tracing == running.tracing and not done.config.tracing.enabled
    assert done.needs_restart == ("tracing.otlp_endpoint", "tracing.sample_ratio")
    assert done.summary()["needs_restart"] == ["tracing.otlp_endpoint", "tracing.sample_ratio"]
    # And back: a gateway started with tracing keeps exporting until it restarts.
    back = plan(config(traced), running)
    assert back.config.tracing.traces_url == "http://127.0.0.1:4318/v1/traces"
    assert back.needs_restart == ("tracing.otlp_endpoint", "tracing.sample_ratio")
