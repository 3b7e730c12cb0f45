"""dvc.yaml's deps of each stage cover every textclf module the stage can run.

A stage's modules: those its entry module (`python -m textclf.stages.<name>`) loads in a fresh
interpreter, and, transitively, every textclf module their source names: imports at any depth
(lazy ones inside functions too), sibling files named in strings ("pyfunc_model.py", the file
MLflow runs to build the shipped model) and, for a module that imports a builder of objects by
name at its top (hydra.utils' instantiate, get_object...), every textclf `_target_` of conf/ that
such a builder can be handed (the models and schedules a config can choose; data sources and
encoders are built by config.build from the data stages' own sections, which list them whole)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_dvc_pipeline import copy_repository, run, stages_run

from textclf.config import DATA_SECTIONS
from textclf.params import write_params

from conftest import REPO_ROOT, shrink_overrides, subprocess_env

SOURCE = REPO_ROOT / "src"
PACKAGE = SOURCE / "textclf"
DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
STAGES = sorted(DVC_YAML["stages"])
BUILDERS = {"instantiate", "call", "get_object", "get_class", "get_method"}  # of hydra.utils


def conf_targets() -> set[str]:
    """Every textclf `_target_` of conf/'s yaml files but those of the data stages' sections
    (conf/data, conf/encoder: built by config.build alone, never by a module-level builder) and
    those under a `hydra:` key (callbacks Hydra's launcher builds around a sweep, never a stage)."""
    targets: set[str] = set()
    skipped = [REPO_ROOT / "conf" / section for section in DATA_SECTIONS]

    def collect(node: object) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and target.startswith("textclf."):
                targets.add(target)
            for key, value in node.items():
                if key != "hydra":
                    collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for path in (REPO_ROOT / "conf").rglob("*.yaml"):
        if not any(directory in path.parents for directory in skipped):
            collect(yaml.safe_load(path.read_text()))
    assert targets, "conf/ names no textclf target"
    return targets


LOADED = (
    "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
    "print(json.dumps(sorted(m for m in sys.modules if m == 'textclf' or m.startswith('textclf.'))))"
)


def module_file(name: str) -> Path | None:
    """src/textclf/a/b.py or src/textclf/a/b/__init__.py for "textclf.a.b"; the directory for a
    namespace package (textclf itself); else None."""
    base = SOURCE.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return base if base.is_dir() else None


def named_modules(dotted: str) -> set[str]:
    """The textclf modules a dotted name refers to, with the packages above them:
    "textclf.models.lstm.LSTMClassifier" -> textclf, textclf.models, textclf.models.lstm."""
    parts = dotted.split(".")
    found = {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return {module for module in found if module.startswith("textclf")}


def referenced_modules(name: str, path: Path) -> set[str]:
    """Every textclf module the source of module ``name`` (at ``path``) names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= named_modules(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            # A module that builds by name at module level (classifier.py) may build any target;
            # config.py imports get_object only inside the signature check the data stages skip.
            if base == "hydra.utils" and BUILDERS & {alias.name for alias in node.names} and node.col_offset == 0:
                for target in conf_targets():
                    found |= named_modules(target)
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= named_modules(base)
            for alias in node.names:  # `from textclf import plots` names a module
                found |= named_modules(f"{base}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.endswith(".py") and (path.parent / text).is_file():
                sibling = (path.parent / text).relative_to(SOURCE).with_suffix("")
                found.add(".".join(sibling.parts))
    return found


def stage_modules(stage: str) -> set[str]:
    entry = DVC_YAML["stages"][stage]["cmd"].split()[2]  # python -m textclf.stages.<name>
    loaded = subprocess.run(
        [sys.executable, "-c", LOADED, entry],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    modules = set(json.loads(loaded.stdout.splitlines()[-1]))
    assert entry in modules
    pending = sorted(modules)
    while pending:
        name = pending.pop()
        path = module_file(name)
        assert path is not None, f"{name} was loaded but has no file under {PACKAGE}"
        if path.is_dir():
            continue  # a namespace package: no code of its own
        for module in referenced_modules(name, path) - modules:
            modules.add(module)
            pending.append(module)
    return modules


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO_ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_depends_on_every_module_it_runs(stage: str) -> None:
    deps = [dep for dep in DVC_YAML["stages"][stage]["deps"] if not dep.startswith("${")]
    files = {module_file(name) for name in stage_modules(stage)} - {PACKAGE}
    missing = sorted(str(path.relative_to(REPO_ROOT)) for path in files if not covered(path, deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs these but does not depend on them: {missing}"
    # Not the whole package: an edit anywhere would rerun every stage (download included).
    assert str(PACKAGE.relative_to(REPO_ROOT)) not in deps


def test_lazy_imports_and_hydra_targets_count_as_modules_a_stage_runs() -> None:
    """The walk sees what importing the entry module alone does not load."""
    train, evaluate = stage_modules("train"), stage_modules("evaluate")
    assert {"textclf.models.lstm", "textclf.models.transformer", "textclf.models.schedules"} <= train
    assert "textclf.plots" in evaluate
    assert "textclf.pyfunc_model" in train | evaluate  # named as a file, run by MLflow


@pytest.mark.slow
def test_an_edit_to_a_module_only_evaluate_runs_reruns_evaluate(tmp_path: Path, tiny_archive) -> None:
    """Train would rerun with byte-equal outputs after an edit it shares with evaluate; an edit
    to code evaluate alone runs reruns evaluate alone, and reports/metrics.json is rewritten."""
    # Run by evaluate and by no other stage, nor inside another stage's deps (a directory dep).
    others = set().union(*(stage_modules(stage) for stage in STAGES if stage != "evaluate"))
    other_deps = [dep for stage in STAGES if stage != "evaluate" for dep in DVC_YAML["stages"][stage]["deps"]]
    evaluate_only = sorted(
        name for name in stage_modules("evaluate") - others if not covered(module_file(name), other_deps)
    )
    assert evaluate_only, "no module is run by evaluate alone"
    edited = module_file(evaluate_only[0]).relative_to(REPO_ROOT)

    repo = copy_repository(tmp_path / "repo")
    archive, sha256 = tiny_archive
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_params(repo / "params.yaml", shrink_overrides(archive, sha256), root=repo)
    run(["dvc", "repro"], repo, env)
    metrics = repo / "reports" / "metrics.json"
    written = metrics.stat().st_mtime_ns

    with (repo / edited).open("a") as file:
        file.write("\n# an evaluation-only edit\n")
    output = run(["dvc", "repro"], repo, env)
    assert stages_run(output) == ["evaluate"], f"after editing {edited}"
    assert metrics.stat().st_mtime_ns != written
