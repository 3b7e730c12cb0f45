"""The package's import graph: the stages depend on the library, never the reverse, and no
textclf module imports itself back through others (function-level imports count: they run too).

Read from the source (ast), not by importing: every import statement anywhere in a module,
``from textclf import plots`` naming the module ``textclf.plots``."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "textclf"
STAGES = "textclf.stages"
# Runs the four stages in one process (Hydra jobs, tune trials): the one library module that
# imports them. Everything else reaches the stages through it, if at all.
RUNS_THE_STAGES = {"textclf.pipeline"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """textclf module -> the textclf modules it imports (anywhere in its source)."""
    modules = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(max(node.level - 1, 0)):
                    package = package.rpartition(".")[0]
                base = node.module if node.level == 0 else ".".join(filter(None, (package, node.module)))
                imported.add(base)
                imported.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_reader_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "textclf.errors" in graph["textclf.config"]  # module level
    assert "textclf.encoders.text" in graph["textclf.predict"]  # inside a function
    assert "textclf.plots" in graph["textclf.stages.evaluate"]  # from textclf import plots
    assert "textclf.stages.train" in graph["textclf.pipeline"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_library_module_imports_a_stage() -> None:
    graph = import_graph()
    offenders = {
        module: sorted(t for t in targets if t == STAGES or t.startswith(f"{STAGES}."))
        for module, targets in graph.items()
        if not (module == STAGES or module.startswith(f"{STAGES}.")) and module not in RUNS_THE_STAGES
    }
    assert {module: found for module, found in offenders.items() if found} == {}


def test_no_textclf_module_imports_itself_through_others() -> None:
    assert find_cycle(import_graph()) is None
