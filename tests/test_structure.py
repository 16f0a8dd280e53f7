"""The package's structure: data flows one way (docs/architecture.md), and no two modules import each other.

Read from the source (every import statement, including those inside functions), so a
lazy import cannot hide a cycle or a layer violation.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__import__("hybrid_rl").__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from x import y`` counts y when y is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, modules) for path in files}


def reaches(graph: dict[str, set[str]], start: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(target for target in graph[start] if target.startswith(prefixes))


def test_the_data_layer_imports_nothing_above_it(graph: dict[str, set[str]]) -> None:
    above = ("hybrid_rl.algos", "hybrid_rl.engine", "hybrid_rl.train", "hybrid_rl.grid", "hybrid_rl.units", "hybrid_rl.ray_launcher",
             "hybrid_rl.eval", "hybrid_rl.cli")
    offenders = {name: reaches(graph, name, above) for name in graph if name.startswith("hybrid_rl.data")}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_algorithms_know_no_training_loop_and_analysis_knows_no_training(graph: dict[str, set[str]]) -> None:
    training = ("hybrid_rl.engine", "hybrid_rl.train", "hybrid_rl.grid", "hybrid_rl.units", "hybrid_rl.ray_launcher", "hybrid_rl.cli")
    algos = {name: reaches(graph, name, (*training, "hybrid_rl.data", "hybrid_rl.eval")) for name in graph if name.startswith("hybrid_rl.algos")}
    assert {name: targets for name, targets in algos.items() if targets} == {}
    analysis = {name: reaches(graph, name, (*training, "hybrid_rl.algos")) for name in graph if name.startswith("hybrid_rl.eval")}
    assert {name: targets for name, targets in analysis.items() if targets} == {}


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # A package's __init__ importing its own modules is not a cycle between modules.
    edges = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [name, target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []
