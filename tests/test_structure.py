"""The architecture the style guide draws: data flows one way (data -> models -> training ->
exporters -> analysis -> CLI), so no module imports a later layer and no import cycles back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["toolkit.data", "toolkit.models", "toolkit.training", "exporters", "analysis",
          "toolkit.cli"]  # fmt: skip


def _layer(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("toolkit", "exporters", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _layer(m) is not None))
def test_no_module_imports_a_later_layer(module: str):
    mine = _layer(module)
    assert mine is not None
    later = [
        name
        for name in _imports(_modules()[module])
        if (other := _layer(name)) is not None and other > mine
    ]
    assert not later, f"{module} ({LAYERS[mine]}) imports {later}"


def _module_level_graph() -> dict[str, set[str]]:
    """Module -> the rtk modules it imports at module level, TYPE_CHECKING blocks included (a
    cycle that only type hints close is still two modules that need each other);
    function-level imports excluded."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        body = ast.parse(path.read_text()).body
        for block in body:
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING":
                body = [*body, *block.body]
        for node in body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from pkg import submodule` loads the submodule
                    child = f"{node.module}.{alias.name}"
                    edges.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = {e for e in edges if e in modules}
    return graph


def test_no_import_cycle():
    graph = _module_level_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for child in sorted(graph[module]):
            if child.startswith(module + "."):
                continue  # a package loading its own submodules is not a cycle
            if state.get(child) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(child) :], child]))
            if child not in state:
                visit(child, [*path, child])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
