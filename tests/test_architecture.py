"""The pipeline reads one way: io -> graph -> align -> facts -> engine -> diagnose -> report.

Each module's imports (module level and inside functions, outside ``if TYPE_CHECKING:``) are read
from its source; a stage may import its own and earlier stages and the shared data modules, and
the import graph has no cycle. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "ckptlint"
STAGES = ("io", "graph", "align", "facts", "engine", "diagnose", "report")
# Plain data and helpers every stage may use; they import no stage (checked below).
SHARED = {"errors", "severity", "vocabulary", "_toml", "numbers", "output", "progress", "results", "identity",
          "presets", "data", "options", "selection", "baseline", "load_mapping", "report_data", "gc_pause"}
# What wires the stages together: may import anything, nothing imports it but other wiring.
WIRING = {"runner", "diff_runner", "git_blob", "python_api", "config", "cli", "testing", "user_model", "__main__",
          "__init__", "parts", "merge", "many", "part_cache", "targets", "dask_backend"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_imports(path: Path) -> set[str]:
    """ckptlint modules ``path`` imports, at module level or inside a function (a lazy import is
    a dependency all the same); only ``if TYPE_CHECKING:`` blocks are left out (they never run)."""
    found: set[str] = set()
    nodes: list[ast.AST] = [ast.parse(path.read_text("utf-8"))]
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            nodes += node.orelse
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ckptlint")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ckptlint"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        nodes += ast.iter_child_nodes(node)
    return found


def _graph() -> nx.DiGraph:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in _runtime_imports(path) if target in modules
                             and target != name and not name.startswith(target + "."))
    return graph


def _area(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def _rank(module: str) -> int:
    area = _area(module)
    if area in SHARED:
        return -1
    if area in WIRING:
        return len(STAGES)
    return STAGES.index(area)


def test_every_module_belongs_to_a_stage_or_is_declared_shared_or_wiring() -> None:
    unknown = {_area(m) for m in _graph()} - set(STAGES) - SHARED - WIRING
    assert not unknown, f"place these in a stage, SHARED or WIRING (and in docs/architecture.md): {unknown}"


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_stages_import_only_earlier_stages_and_shared_modules() -> None:
    backwards = [(a, b) for a, b in _graph().edges if _area(a) != _area(b) and _rank(b) > _rank(a)]
    assert not backwards, "imports against the pipeline's direction:\n" + "\n".join(f"{a} -> {b}" for a, b in backwards)


def test_reporters_name_no_rule() -> None:
    """Reports read data (pairs, verdicts, the transfer result), never one rule's findings."""
    names = {path.parent.name.split("-", 1)[1] for path in (PACKAGE.parent / "rules").glob("*/rule.toml")}
    for path in (PACKAGE / "report").rglob("*"):
        if path.is_file() and path.suffix in (".py", ".j2"):
            text = path.read_text("utf-8")
            assert not [name for name in names if f'"{name}"' in text or f"'{name}'" in text], path


def test_the_import_walk_sees_imports() -> None:
    """The checks above would pass on an empty graph: the walk must find the known edges."""
    graph = _graph()
    assert graph.has_edge("ckptlint.runner", "ckptlint.align.transfer")
    assert graph.has_edge("ckptlint.facts.transfer", "ckptlint.align.transfer")
    assert graph.has_edge("ckptlint.cli", "ckptlint.runner")  # imported inside a command: counted too
    assert not graph.has_edge("ckptlint.report.text", "ckptlint.results")  # annotations only


def test_every_package_ships_in_the_wheel() -> None:
    """A stage package missing from pyproject's list imports from a checkout and fails installed."""
    from ckptlint._toml import tomllib

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text("utf-8"))
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {_module_name(init) for init in PACKAGE.rglob("__init__.py") if "__pycache__" not in init.parts}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
