"""The import rules of docs/architecture.md, checked on the source: no import cycle inside the
package (function-level imports included; imports for type checking only are not run), the
augmentation package imports no training or search module, training imports no engine, the
events module imports only the core layer, and no engine imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "policysearch"
ENGINES = ("policysearch.search.optuna_engine", "policysearch.search.ray_engine",
           "policysearch.search.ray_pbt", "policysearch.search.density")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports at run time, anywhere (top level or in a function;
    not in an ``if TYPE_CHECKING:`` block), each resolved to the module that defines the
    imported name."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("policysearch"):
                found.add(name)
    found.discard(_module_name(path))
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Imports between modules, leaving out a package's own ``__init__`` re-exporting its
    submodules (a package and its members are one unit there)."""
    return {m: {t for t in targets if not (m.startswith(t + ".") or t.startswith(m + "."))}
            for m, targets in graph.items()}


def test_no_import_cycle_inside_the_package() -> None:
    assert _cycles(_package_edges(_graph())) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("importer", "forbidden"), [
    ("policysearch.augment", ("policysearch.training", "policysearch.search",
                              "policysearch.evaluation", "policysearch.reporting",
                              "policysearch.models", "policysearch.tasks")),
    ("policysearch.training", ("policysearch.search", "policysearch.evaluation",
                               "policysearch.reporting")),
    ("policysearch.input_pipeline", ("policysearch.training", "policysearch.search",
                                     "policysearch.evaluation", "policysearch.reporting")),
    ("policysearch.records", ("policysearch.search", "policysearch.training")),
    ("policysearch.reporting", ("policysearch.search.optuna_engine",
                                "policysearch.search.ray_engine", "policysearch.search.ray_pbt",
                                "policysearch.search.driver", "policysearch.evaluation")),
])
def test_a_layer_imports_nothing_above_it(importer: str, forbidden: tuple[str, ...]) -> None:
    graph = _graph()
    mine = {m: targets for m, targets in graph.items()
            if m == importer or m.startswith(importer + ".")}
    assert mine, importer
    bad = {m: sorted(t for t in targets if t.startswith(forbidden))
           for m, targets in mine.items()}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_events_module_imports_only_the_core_layer() -> None:
    core = {"policysearch.config", "policysearch.records", "policysearch.errors",
            "policysearch.weighting_schema"}
    assert _graph()["policysearch.events"] <= core


def test_no_engine_imports_another() -> None:
    graph = _graph()
    for engine in ENGINES:
        assert engine in graph
        assert not graph[engine] & (set(ENGINES) - {engine}), engine


def test_no_function_of_the_search_package_is_over_80_lines() -> None:
    long = []
    for path in (PACKAGE / "search").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 80:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
