"""The package's layout rule, checked over the import graph of `gateway/`.

Imports run one way: `http → engine → upstream / store → config and the shared leaves`
(`errors`, `metrics`, `tasks`, `logs`); `app` and `cli` at the top compose them all.
No module imports one above its own layer, upstream and store know nothing of each
other, and no two modules import each other, even only for type checking.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

LAYERS: dict[str, int] = {
    "gateway": 0,  # the package's own __init__: the version
    "gateway.errors": 1,
    "gateway.metrics": 1,
    "gateway.tasks": 1,
    "gateway.logs": 1,
    "gateway.config": 2,
    "gateway.upstream": 3,
    "gateway.store": 3,
    "gateway.engine": 4,
    "gateway.http": 5,
    "gateway.app": 6,
    "gateway.cli": 7,
    "gateway.demo": 6,
    "gateway.__main__": 8,
}
SIBLINGS_APART = {frozenset({"gateway.upstream", "gateway.store"})}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The gateway modules a file imports, type-checking imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gateway" or node.module.startswith("gateway."):
                # `from gateway.engine import driver` imports gateway.engine.driver.
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if _exists(candidate) else node.module)
    return found


def _exists(module: str) -> bool:
    base = PACKAGE.parent / module.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _layer(module: str) -> tuple[str, int]:
    best = max(
        (name for name in LAYERS if module == name or module.startswith(name + ".")), key=len
    )
    return best, LAYERS[best]


GRAPH = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in GRAPH if _layer(m)[0] == "gateway" and m != "gateway"]
    assert not unplaced, f"place these modules in a layer: {unplaced}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_down(module: str) -> None:
    home, rank = _layer(module)
    wrong = []
    for target in sorted(GRAPH[module]):
        there, target_rank = _layer(target)
        if there == home:
            continue
        if target_rank > rank or frozenset({home, there}) in SIBLINGS_APART:
            wrong.append(target)
    assert not wrong, f"{module} ({home}) must not import {wrong}"


def test_no_circles() -> None:
    """Depth-first search for a cycle among modules (a package's face counts as its own)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in GRAPH.get(module, ()):
            if target not in GRAPH or target == module:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (circle := visit(target)) is not None:
                return circle
        stack.pop()
        state[module] = 2
        return None

    for module in GRAPH:
        if module not in state and (circle := visit(module)) is not None:
            pytest.fail(" → ".join(circle))


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The parser sees imports inside functions and under TYPE_CHECKING."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway.engine.driver import Driver\n"
        "def f() -> None:\n    from gateway.http import ingress\n"
    )
    assert _imports(source) == {"gateway.engine.driver", "gateway.http.ingress"}
