"""deploy/: the compose example, linted here because no container engine runs in CI.

The Compose Specification's own JSON schema (vendored by check-jsonschema) judges the
compose file's shape; `haproxy -c` the load balancer's file; our loader the gateway's,
with the environment compose gives each node. `deploy_problems` checks what none of
them can see: names, files, ports and settings that must agree across compose.yaml,
haproxy.cfg, gateway.yaml, the Dockerfile and its build context.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig
from gateway.config.loader import load_config
from gateway.config.storage_url import PostgresUrl, parse_storage_url
from gateway.errors import ConfigError
from tests.helpers import ROOT

COMPOSE = Path("deploy/compose.yaml")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
HAPROXY_CFG_IN_IMAGE = "/usr/local/etc/haproxy/haproxy.cfg"
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="Debian's `haproxy` is not installed (.ci/run installs it)"
)

# ── compose's variable expansion ───────────────────────────────────────────────

_REF = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.DOTALL)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` and `$$` in every
    string of a loaded file; ValueError for a variable `env` lacks and no default covers."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        parts = _BRACED.fullmatch(m["braced"] or m["named"])
        if parts is None:
            raise ValueError(f"bad variable reference {m[0]!r}")
        name, op, arg = parts["name"], parts["op"], parts["arg"] or ""
        current = env.get(name)
        if op == ":-" and not current or op == "-" and current is None:
            return arg
        if current is None or op == ":?" and not current:
            raise ValueError(f"{m[0]} has no default, so `up` would need {name} set")
        return current

    return _REF.sub(one, value)


# ── the cross-references ───────────────────────────────────────────────────────


def deploy_problems(repo: Path) -> list[str]:
    """Everything in `repo`'s deploy example that would break `up` but passes the schema."""
    raw = yaml.safe_load((repo / COMPOSE).read_text())
    problems = ["compose.yaml: `version` is obsolete"] if "version" in raw else []
    try:
        compose = interpolate(raw, {})  # one command: no variable may need setting
    except ValueError as e:
        return [*problems, f"compose.yaml: {e}"]
    where = (repo / COMPOSE).parent
    services: dict[str, Any] = compose["services"]
    problems += _references(services, set(compose.get("volumes") or {}), where)
    problems += _port_clashes(services)
    configs = gateway_configs(services, where, problems)
    problems += _cluster(services, configs)
    problems += _load_balancer(services, configs, where)
    problems += _image(repo)
    return problems


def _references(services: dict[str, Any], volumes: set[str], where: Path) -> list[str]:
    problems = []
    for name, service in services.items():
        for other in service.get("depends_on") or ():
            if other not in services:
                problems.append(f"{name} depends on {other}, which is not a service")
        build = service.get("build")
        if build is not None:
            context = where / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            dockerfile = dockerfile or "Dockerfile"
            if not (context / dockerfile).is_file():
                problems.append(f"{name} builds from {context}, which has no {dockerfile}")
        for source, _ in mounts(service):
            if source.startswith((".", "/")):
                if not (where / source).exists():
                    problems.append(f"{name} mounts {source}, which does not exist")
            elif source not in volumes:
                problems.append(f"{name} mounts volume {source}, which is not declared")
    return problems


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A service's (source, target) volumes, short syntax `source:target[:mode]`."""
    out = []
    for volume in service.get("volumes") or ():
        source, target, *_ = str(volume).split(":")
        out.append((source, target))
    return out


def published(service: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of `[address:]host:container` entries."""
    out = []
    for entry in service.get("ports") or ():
        *host, container = str(entry).split("/")[0].split(":")
        address = host[0] if len(host) == 2 else "0.0.0.0"
        out.append((address, int(host[-1]), int(container)))
    return out


def _port_clashes(services: dict[str, Any]) -> list[str]:
    """No host port published twice; only the load balancer beyond the host's loopback."""
    seen: dict[int, list[tuple[str, str]]] = {}
    problems = []
    for name, service in services.items():
        for address, port, _ in published(service):
            if not _loopback(address) and not _is_balancer(service):
                problems.append(f"{name} publishes port {port} beyond the host's loopback")
            for other, other_address in seen.get(port, []):
                if "0.0.0.0" in (address, other_address) or address == other_address:
                    problems.append(f"{name} and {other} both publish host port {port}")
            seen.setdefault(port, []).append((name, address))
    return problems


def gateway_configs(
    services: dict[str, Any], where: Path, problems: list[str]
) -> dict[str, GatewayConfig]:
    """Each gateway service's config as its node loads it: the mounted file, expanded
    with the environment compose sets for that container (loader errors go to problems)."""
    configs = {}
    for name, service in services.items():
        command = service.get("command") or []
        if "--config" not in command:
            continue
        path = command[command.index("--config") + 1]
        sources = [source for source, target in mounts(service) if target == path]
        if not sources:
            problems.append(f"{name} reads {path}, which no volume mounts")
            continue
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        try:
            configs[name] = load_config(where / sources[0], env=env)
        except ConfigError as e:
            problems.append(f"{name}: {e}")
    return configs


def _cluster(services: dict[str, Any], configs: dict[str, GatewayConfig]) -> list[str]:
    """Per node: it names itself, the backend can reach its sidecar, its upstreams and
    database are services; across nodes: distinct ids, one secret, one port layout."""
    problems = []
    for name, config in configs.items():
        server = config.server
        sidecar = urlsplit(server.sidecar_url or "")
        if (sidecar.hostname, sidecar.port) != (name, server.sidecar[1]):
            problems.append(f"{name}'s sidecar_url {server.sidecar_url} is not its own sidecar")
        health = " ".join(services[name].get("healthcheck", {}).get("test", []))
        if f"127.0.0.1:{server.admin[1]}/readyz" not in health:
            problems.append(f"{name}'s healthcheck does not ask its admin port for /readyz")
        for route in config.routes:
            problems += _service_url(services, f"{name} route {route.name}", route.upstream)
        problems += _database(services, name, config)
    nodes = list(configs.values())
    node_ids = {c.cluster.node_id for c in nodes}
    if len(node_ids) < len(nodes) or None in node_ids:
        problems.append("the gateways need distinct cluster.node_id values")
    secrets = {c.security.secret for c in nodes}
    if len(secrets) > 1 or None in secrets:
        problems.append("the gateways must sign with one security.secret, set on each")
    if len({(c.server.ingress[1], c.server.admin[1]) for c in nodes}) > 1:
        problems.append("the gateways listen on different ports; haproxy.cfg has one layout")
    return problems


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _service_url(services: dict[str, Any], what: str, url: str) -> list[str]:
    """`url` names a service, on the port it is told to listen on (`--port N`)."""
    parts = urlsplit(url)
    if parts.hostname not in services:
        return [f"{what} goes to {parts.hostname}, which is not a service"]
    command = [str(arg) for arg in services[parts.hostname].get("command") or []]
    if "--port" in command and command[command.index("--port") + 1] != str(parts.port):
        return [f"{what} goes to port {parts.port}; {parts.hostname} listens elsewhere"]
    return []


def _database(services: dict[str, Any], name: str, config: GatewayConfig) -> list[str]:
    url = parse_storage_url(config.storage.url)
    if not isinstance(url, PostgresUrl):
        return [f"{name} does not use PostgreSQL"]
    parts = urlsplit(url.url)
    if parts.hostname not in services:
        return [f"{name}'s database host {parts.hostname} is not a service"]
    env = services[parts.hostname].get("environment") or {}
    want = (env.get("POSTGRES_USER"), env.get("POSTGRES_PASSWORD"), env.get("POSTGRES_DB"))
    if (parts.username, parts.password, parts.path.lstrip("/")) != want:
        return [f"{name}'s user, password or database differs from {parts.hostname}'s"]
    return []


def _is_balancer(service: Mapping[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("haproxy")


def _load_balancer(
    services: dict[str, Any], configs: dict[str, GatewayConfig], where: Path
) -> list[str]:
    """HAProxy sends traffic to every gateway, on its ingress, checks its admin port,
    and listens where compose publishes it."""
    balancers = [name for name, service in services.items() if _is_balancer(service)]
    if len(balancers) != 1 or not configs:
        return ["expected one haproxy service in front of the gateways"]
    lb = services[balancers[0]]
    sources = [source for source, target in mounts(lb) if target == HAPROXY_CFG_IN_IMAGE]
    if not sources or not (where / sources[0]).is_file():
        return [f"{balancers[0]} does not mount a haproxy.cfg at {HAPROXY_CFG_IN_IMAGE}"]
    text = (where / sources[0]).read_text()
    servers = dict(re.findall(r"^\s*server\s+\S+\s+([\w.-]+):(\d+)", text, re.MULTILINE))
    problems = [
        f"haproxy.cfg names {h}, which is not a gateway" for h in servers if h not in configs
    ]
    sample = next(iter(configs.values())).server
    problems += [f"haproxy.cfg leaves out {name}" for name in configs if name not in servers]
    problems += [
        f"haproxy.cfg sends {host} traffic to port {port}, not its ingress"
        for host, port in servers.items()
        if int(port) != sample.ingress[1]
    ]
    if set(re.findall(r"\bcheck port (\d+)", text)) != {str(sample.admin[1])}:
        problems.append("haproxy.cfg's health checks do not ask the gateways' admin port")
    binds = {int(port) for port in re.findall(r"^\s*bind\s+\S*:(\d+)", text, re.MULTILINE)}
    if sample.ingress[1] not in binds or not binds <= {c for _, _, c in published(lb)}:
        problems.append("haproxy.cfg binds ports compose does not publish")
    return problems


# ── the image ──────────────────────────────────────────────────────────────────


def _image(repo: Path) -> list[str]:
    """The Dockerfile installs the PostgreSQL driver, and the build context holds every
    file it copies (none excluded by .dockerignore)."""
    dockerfile = (repo / "Dockerfile").read_text()
    problems = []
    if not re.search(r"pip install .*['\"]?\.\[[^\]]*\bpostgres\b", dockerfile):
        problems.append("the Dockerfile does not install the postgres extra")
    ignore = repo / ".dockerignore"
    patterns = _dockerignore(ignore.read_text() if ignore.exists() else "")
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE):
        for source in line.split()[:-1]:
            if not (repo / source).exists():
                problems.append(f"the Dockerfile copies {source}, which does not exist")
            files = [repo / source] if (repo / source).is_file() else (repo / source).rglob("*")
            for file in files:
                relative = file.relative_to(repo).as_posix()
                if "__pycache__" not in relative and _ignored(relative, patterns):
                    problems.append(f".dockerignore leaves out {relative}, which is copied")
    return problems


def _dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!…`, regex) per pattern, in order; `**` crosses directories."""
    out = []
    for line in text.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        out.append((negated, re.compile(regex)))
    return out


def _ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a pattern matching a directory excludes what is in it; the last
    pattern that matches the path or one of its directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# ── tests ──────────────────────────────────────────────────────────────────────


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the Compose Specification's schema it ships."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)


def test_compose_follows_the_compose_specification() -> None:
    result = check_compose(ROOT / COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_compose_file_off_the_specification_is_refused(tmp_path: Path) -> None:
    text = (ROOT / COMPOSE).read_text()
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace("    healthcheck:", "    healthchek:", 1))
    result = check_compose(broken)
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


def test_the_deploy_files_agree() -> None:
    assert deploy_problems(ROOT) == []


def test_each_gateway_loads_the_shared_config_as_its_own_node() -> None:
    compose = interpolate(yaml.safe_load((ROOT / COMPOSE).read_text()), {})
    problems: list[str] = []
    configs = gateway_configs(compose["services"], (ROOT / COMPOSE).parent, problems)
    assert problems == []
    assert sorted(configs) == ["gateway-1", "gateway-2"]
    for name, config in configs.items():
        assert config.cluster.node_id == name
        assert config.server.sidecar_url == f"http://{name}:8081"
        assert config.storage.url.startswith("postgresql://durable:")
        assert config.storage.pool >= 1
        assert {route.durable for route in config.routes} == {True, False}
        assert config.security.admin_token


def copy_of_repo(tmp_path: Path) -> Path:
    """The files the deploy example reads, editable: deploy/ and the image's files are
    copies, the package sources are links."""
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("examples", "gateway", "step_protocol", "pyproject.toml", "README.md"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "config.example.yaml").symlink_to(ROOT / "config.example.yaml")
    return tmp_path


BROKEN = [
    ("deploy/haproxy.cfg", "gateway-2:8080", "gateway-3:8080", "names gateway-3"),
    ("deploy/haproxy.cfg", "gateway-2:8080", "gateway-2:8081", "not its ingress"),
    ("deploy/haproxy.cfg", "    server gateway-2", "#   server gateway-2", "leaves out gateway-2"),
    ("deploy/haproxy.cfg", "check port 8082", "check port 8081", "admin port"),
    ("deploy/haproxy.cfg", "bind :8080", "bind :8081", "does not publish"),
    ("deploy/compose.yaml", "./gateway.yaml:/etc", "./gateways.yaml:/etc", "does not exist"),
    ("deploy/compose.yaml", "./haproxy.cfg:/usr", "./haproxy2.cfg:/usr", "not exist"),
    ("deploy/compose.yaml", "pgdata:/var", "pg-data:/var", "not declared"),
    ("deploy/compose.yaml", '"127.0.0.1:8083:8082"', '"8083:8082"', "beyond the host's"),
    ("deploy/compose.yaml", "127.0.0.1:8083:8082", "127.0.0.1:8082:8082", "both publish"),
    ("deploy/compose.yaml", "- gateway-2\n", "- gateway-3\n", "depends on gateway-3"),
    ("deploy/compose.yaml", "dockerfile: Dockerfile", "dockerfile: Containerfile", "has no"),
    ("deploy/compose.yaml", "name: durable-gateway", 'version: "3.8"', "obsolete"),
    ("deploy/compose.yaml", "DURABLE_NODE_ID: gateway-2", "NODE_ID: gateway-2", "not set"),
    ("deploy/compose.yaml", "ID: gateway-2", "ID: gateway-1", "distinct cluster.node_id"),
    ("deploy/compose.yaml", "URL: http://gateway-2:8081", "URL: http://gateway-1:8081", "own"),
    ("deploy/compose.yaml", "${POSTGRES_PASSWORD:-demo-password}", "${POSTGRES_PASSWORD}", "set"),
    ("deploy/compose.yaml", "POSTGRES_DB: durable", "POSTGRES_DB: gateway", "database differs"),
    ("deploy/compose.yaml", "8082/readyz", "8081/readyz", "healthcheck"),
    ("deploy/compose.yaml", '"--port", "3000"', '"--port", "3001"', "listens elsewhere"),
    ("deploy/compose.yaml", "DURABLE_ADMIN_TOKEN: ${", "ADMIN_TOKEN: ${", "admin_token"),
    (
        "deploy/gateway.yaml",
        "admin_token: ${DURABLE_ADMIN_TOKEN}",
        "",
        "beyond loopback, without security.admin_token",
    ),
    ("deploy/gateway.yaml", "http://backend:3000", "http://backends:3000", "not a service"),
    ("deploy/gateway.yaml", "secret: ${DURABLE_SECRET}", "secret: ${DURABLE_NODE_ID}", "one"),
    ("deploy/gateway.yaml", "@db:5432", "@postgres:5432", "not a service"),
    ("Dockerfile", "'.[postgres]'", ".", "postgres extra"),
    ("Dockerfile", "COPY gateway ./gateway", "COPY gateways ./gateway", "does not exist"),
    (".dockerignore", "\ntests\n", "\ntests\n**/*.html\n", "leaves out gateway/http/static/"),
    (".dockerignore", "\ntests\n", "\ngateway/**\n!gateway/http\n", "leaves out gateway/app.py"),
]


@pytest.mark.parametrize(("file", "old", "new", "expected"), BROKEN)
def test_a_broken_cross_reference_is_reported(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    repo = copy_of_repo(tmp_path)
    text = (repo / file).read_text()
    assert old in text, f"{file} no longer contains {old!r}: update this case"
    (repo / file).write_text(text.replace(old, new, 1))
    problems = deploy_problems(repo)
    assert any(expected in problem for problem in problems), problems


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None
    return subprocess.run(
        [HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )


@needs_haproxy
def test_haproxy_accepts_its_config_without_resolving_the_compose_names() -> None:
    result = haproxy_check(ROOT / "deploy/haproxy.cfg")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    # Outside compose the gateways' names do not resolve (`init-addr none` allows it);
    # any other warning is a mistake in the file.
    unresolved = re.compile(r"could not resolve address 'gateway-[12]'")
    assert [w for w in warnings if not unresolved.search(w)] == []


@needs_haproxy
def test_haproxy_refuses_a_broken_config(tmp_path: Path) -> None:
    text = (ROOT / "deploy/haproxy.cfg").read_text()
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(text.replace("balance roundrobin", "balance round-robin"))
    result = haproxy_check(broken)
    assert result.returncode != 0
    assert "balance only supports" in result.stderr
