"""The package's import graph: the stages depend on the library, never the reverse, and no
textclf module imports itself back through others (function-level imports count: they run too).

Read from the source (ast), not by importing: every import statement anywhere in a module,
``from textclf import plots`` naming the module ``textclf.plots``, except those under
``if TYPE_CHECKING:``, which never run (annotations only)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "textclf"
STAGES = "textclf.stages"
# Runs the four stages in one process (Hydra jobs, tune trials): the one library module that
# imports them. Everything else reaches the stages through it, if at all.
RUNS_THE_STAGES = {"textclf.pipeline"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): a block that never runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def running_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but the bodies of ``if TYPE_CHECKING:`` blocks (their else runs)."""
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if is_type_checking(node):
            pending.extend([node.test, *node.orelse])
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """textclf module -> the textclf modules it imports (anywhere in its source)."""
    modules = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in running_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
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


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    graph = import_graph()
    assert "textclf.errors" in graph["textclf.config"]  # module level
    assert "textclf.encoders.text" in graph["textclf.predict"]  # inside a function
    assert "textclf.config" in graph["textclf.data.sources.base"]  # inside a function (build_source)
    assert "textclf.plots" in graph["textclf.stages.evaluate"]  # from textclf import plots
    assert "textclf.stages.train" in graph["textclf.pipeline"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

    # Under `if TYPE_CHECKING:` an import never runs; its else branch does.
    package = tmp_path / "textclf"
    package.mkdir()
    for name in ("__init__", "a", "b", "c"):
        (package / f"{name}.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nimport typing\n"
        "if TYPE_CHECKING:\n    from textclf import b\nelse:\n    import textclf.c\n"
        "if typing.TYPE_CHECKING:\n    import textclf.b\n"
    )
    assert import_graph(package)["textclf.a"] == {"textclf.c"}


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
