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


# Every module's layer (docs/architecture.md): the folders are the layers. A module outside
# them (a new top-level file) fails the test below, so a layer break cannot hide in it.
LAYER_MODULES: dict[str, tuple[str, ...]] = {
    "base": ("hybrid_rl.core",),
    "data": ("hybrid_rl.data",),
    "algorithms": ("hybrid_rl.algos",),
    "engine": ("hybrid_rl.engine",),
    "runs": ("hybrid_rl.runs",),
    "studies": ("hybrid_rl.studies",),
    "analysis": ("hybrid_rl.eval",),
    "commands": ("hybrid_rl.cli",),
    "package": ("hybrid_rl",),  # the top-level __init__: the public API (lazily: load_policy)
}
# What each layer may import besides itself. The analysis reads run directories, the
# reference scores and the algorithms' declarations (display names, units), never training.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "base": (),
    "data": ("base",),
    "algorithms": ("base",),
    "engine": ("base", "data", "algorithms"),
    "runs": ("base", "data", "algorithms", "engine"),
    "studies": ("base", "data", "algorithms", "runs", "package"),
    "analysis": ("base", "hybrid_rl.data.refs", "hybrid_rl.algos.registry", "hybrid_rl.algos.spec"),
    "commands": ("base", "data", "algorithms", "engine", "runs", "studies", "analysis"),
    "package": ("runs",),
}


def layer_of(module: str) -> str | None:
    """The layer whose most specific prefix names ``module`` (None: not in the map)."""
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYER_MODULES.items():
        for prefix in prefixes:
            inside = module == prefix or (prefix != "hybrid_rl" and module.startswith(prefix + "."))  # the root: itself only
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


def allowed(source: str, target: str) -> bool:
    layer, target_layer = layer_of(source), layer_of(target)
    if target_layer == layer:
        return True
    return any(entry == target_layer or target == entry or target.startswith(entry + ".") for entry in MAY_IMPORT[layer])


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    assert sorted(name for name in graph if layer_of(name) is None) == []


def test_every_import_goes_down_the_layers(graph: dict[str, set[str]]) -> None:
    offenders = {name: sorted(t for t in targets if not allowed(name, t)) for name, targets in graph.items()}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_layer_map_catches_a_break() -> None:
    # The rule itself can fail: training importing the analysis, data importing an algorithm.
    assert not allowed("hybrid_rl.runs.train", "hybrid_rl.eval.stats")
    assert not allowed("hybrid_rl.data.views", "hybrid_rl.algos.iql")
    assert not allowed("hybrid_rl.eval.plotting", "hybrid_rl.algos.iql")
    assert not allowed("hybrid_rl.runs.finetune", "hybrid_rl.studies.phase2")
    assert allowed("hybrid_rl.studies.phase2", "hybrid_rl.runs.finetune") and allowed("hybrid_rl.eval.plotting", "hybrid_rl.algos.registry")
    assert layer_of("hybrid_rl.new_module") is None


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
