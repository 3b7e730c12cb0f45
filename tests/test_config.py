"""conf/ composes, params.yaml is its composition, and bad values are rejected by name."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from textclf.config import DATA_SECTIONS, load_params, validate
from textclf.errors import TextclfError
from textclf.params import compose, write_params
from textclf.stages.preprocess import preprocess

from conftest import REPO_ROOT, subprocess_env

GROUPS = ("data", "encoder", "model", "optimizer", "scheduler", "trainer", "tracking")
# What a data source or a pretrained model needs from the user (its `???` keys); the paths need
# not exist, since validation only checks the config against the constructors.
REQUIRED = {
    "data=folder": ["data.path=corpus"],
    "data=hf": ["data.path=corpus"],
    "data=table": ["data.train=t.csv"],
    "model=hf": ["model.name=model"],
    "encoder=hf": ["model=hf", "model.name=model"],  # the model's own tokenizer: its name and max_len
    "+experiment=minilm": ["model.name=model"],
    "optimizer=adamw": ["model.sparse=false"],  # its weight decay would not reach SparseAdam's tables
}


def group_options() -> list[str]:
    options = [
        f"{group}={path.stem}"
        for group in GROUPS
        for path in sorted((REPO_ROOT / "conf" / group).glob("*.yaml"))
        if not path.stem.startswith("_")  # a file the group's options include (data/_common)
    ]
    presets = sorted((REPO_ROOT / "conf" / "experiment").glob("*.yaml"))
    return options + [f"+experiment={path.stem}" for path in presets]


def target_module(override: str) -> Path:
    """The source file of the class an option's ``_target_`` names."""
    group, option = override.lstrip("+").split("=")
    target = yaml.safe_load((REPO_ROOT / "conf" / group / f"{option}.yaml").read_text()).get("_target_", "")
    return REPO_ROOT / "src" / Path(*target.split(".")[:-1]).with_suffix(".py")


@pytest.mark.parametrize("override", group_options())
def test_every_config_option_composes_and_validates(override: str) -> None:
    if override.startswith(("data=", "encoder=")) and not target_module(override).is_file():
        pytest.skip(f"{target_module(override).relative_to(REPO_ROOT)} is not written yet")
    cfg = validate(compose([override, *REQUIRED.get(override, [])], root=REPO_ROOT))
    assert cfg.seed == 0


def test_committed_params_yaml_is_the_composition_of_conf(tmp_path: Path) -> None:
    composed = tmp_path / "params.yaml"
    write_params(composed, root=REPO_ROOT)
    committed = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert committed == yaml.safe_load(composed.read_text()), "run `make params` to refresh params.yaml"
    load_params(REPO_ROOT / "params.yaml")  # and it validates


def test_dvc_yaml_data_stage_params_are_the_sections_preprocess_reads(
    tiny_config, tiny_archive, tmp_path: Path
) -> None:
    """Each source has keys of its own, so the data stages list whole sections (data, encoder):
    the ones preprocess records in the manifest, and every key of them."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("download", "preprocess"):
        assert stages[stage]["params"] == list(DATA_SECTIONS), stage
    cfg = tiny_config()
    archive, _ = tiny_archive
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(archive, raw / cfg.data.archive_name)
    recorded = preprocess(cfg, raw, tmp_path / "processed", parallel=False)["params"]
    assert list(recorded) == list(DATA_SECTIONS)
    composed = OmegaConf.to_container(cfg.raw, resolve=True)
    assert recorded["data"] == composed["data"]
    assert recorded["encoder"] == {key: value for key, value in composed["encoder"].items() if key != "_target_"}


def test_dvc_config_enables_hydra_composition_of_conf() -> None:
    text = (REPO_ROOT / ".dvc" / "config").read_text()
    assert "[hydra]" in text and "enabled = true" in text and "config_dir = conf" in text


def test_seed_zero_is_a_seed() -> None:
    assert validate(compose(["seed=0"], root=REPO_ROOT)).seed == 0


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("seed=-3", "seed"),
        ("data.sha256=abc", "data.sha256"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.test_fraction=1", "data.test_fraction"),
        ("+data.colour=blue", "data.colour"),  # a key the source's constructor does not take
        ("data.train_dir=", "data.train_dir"),
        ("encoder.remove=[signatures]", "encoder.remove"),
        ("encoder.min_freq=0", "encoder.min_freq"),
        ("+encoder.colour=blue", "encoder.colour"),
        ("model.embed_dim=-8", "model.embed_dim"),
        ("model.embed_dim=wide", "model.embed_dim"),
        ("model.dropout=2", "model.dropout"),
        ("+model.colour=blue", "model.colour"),
        ("+train.epochs=3", "train.epochs"),
        ("model._target_=textclf.models.nope.Nope", "model._target_"),
        ("scheduler.warmup_fraction=2", "scheduler.warmup_fraction"),
        ("trainer.gradient_clip_val=1.0", "model.sparse"),
        ("optimizer.weight_decay=0.0001", "model.sparse=false"),  # SparseAdam steps the sparse tables
    ],
)
def test_bad_values_are_rejected_naming_the_key(override: str, named: str) -> None:
    extra = ["scheduler=cosine"] if override.startswith("scheduler.") else []
    with pytest.raises(TextclfError) as error:
        validate(compose([*extra, override], root=REPO_ROOT))
    message = str(error.value)
    assert named in message
    assert "\n" not in message


@pytest.mark.parametrize("override", ["model=nope", "optimizer.learning_rate=1", "trainer=tpu"])
def test_unknown_groups_and_keys_fail_at_composition(override: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)) as error:
        compose([override], root=REPO_ROOT)
    assert override.split("=")[0].split(".")[-1] in str(error.value)


def test_stage_cli_reports_a_bad_value_in_one_line_and_exits_nonzero(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    write_params(params, ["optimizer.lr=-1"], root=REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "textclf.stages.train", "--params", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [train]") and "optimizer.lr" in lines[0]
    assert not (tmp_path / "models").exists()


def test_stage_cli_reports_missing_processed_data(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    write_params(
        params, [f"paths.processed={tmp_path / 'nothing'}", f"paths.models={tmp_path / 'models'}"], root=REPO_ROOT
    )
    result = subprocess.run(
        [sys.executable, "-m", "textclf.stages.train", "--params", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: [train]")
    assert "processed data not found" in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "models.partial").exists()


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TextclfError, match="nowhere.yaml"):
        load_params(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model._target_=torch.nn.Linear", "model._target_: cannot import 'torch.nn.Linear' (not one of:"),
        ("data._target_=os.system", "data._target_: cannot import 'os.system' (not one of:"),
        ("encoder._target_=os.system", "encoder._target_: cannot import 'os.system' (not one of:"),
        ("scheduler._target_=os.system", "scheduler._target_: cannot import 'os.system' (not one of:"),
        ("scheduler._partial_=false", "scheduler._partial_: must be true"),
        ("+model._partial_=true", "model._partial_: must be false"),
    ],
)
def test_a_section_builds_only_the_project_s_own_targets(override: str, message: str) -> None:
    with pytest.raises(TextclfError, match=re.escape(message)):
        validate(compose([override], root=REPO_ROOT))


def test_weight_decay_is_taken_where_every_table_is_dense() -> None:
    cfg = validate(compose(["model.sparse=false", "optimizer.weight_decay=0.0001"], root=REPO_ROOT))
    assert cfg.optimizer.weight_decay == 0.0001
