"""Choosing a model gives the settings it was tuned with; the README's examples compose."""

from __future__ import annotations

import re
import shlex

import pytest
from omegaconf import OmegaConf

from textclf.config import validate
from textclf.params import compose

from conftest import REPO_ROOT


def plain(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides), root=REPO_ROOT))


@pytest.mark.parametrize("model", ["fasttext", "lstm", "transformer", "linear"])
def test_choosing_a_model_gives_the_preset_it_was_tuned_with(model: str) -> None:
    assert plain(f"model={model}") == plain(f"+experiment={model}")


def test_the_lstm_and_the_transformer_get_their_tuned_optimizer_schedule_and_step_size() -> None:
    lstm, transformer = plain("model=lstm"), plain("model=transformer")
    assert lstm["optimizer"]["_target_"] == "torch.optim.Adam" and lstm["optimizer"]["lr"] == 0.01
    assert lstm["scheduler"]["_target_"] == "textclf.models.schedules.cosine"
    assert (lstm["model"]["embed_dim"], lstm["model"]["sparse"], lstm["train"]["length_buckets"]) == (64, False, 50)
    assert transformer["optimizer"]["_target_"] == "torch.optim.AdamW" and transformer["optimizer"]["lr"] == 0.005
    assert transformer["scheduler"] == {
        "_target_": "textclf.models.schedules.cosine",
        "_partial_": True,
        "warmup_fraction": 0.05,
        "min_lr_ratio": 0.0,
    }


def test_a_choice_on_the_command_line_beats_the_one_a_model_was_tuned_with() -> None:
    transformer = plain("model=transformer", "scheduler=none", "optimizer=adam")
    assert transformer["scheduler"] == {"_target_": "textclf.models.schedules.constant", "_partial_": True}
    assert transformer["optimizer"]["_target_"] == "torch.optim.Adam"
    assert plain("model=lstm", "optimizer.lr=3e-4")["optimizer"]["lr"] == 3e-4
    validate(compose(["model=transformer", "scheduler=none", "optimizer=adam"], root=REPO_ROOT))


def readme_configuration_examples() -> list[list[str]]:
    """The -S overrides of every `dvc exp run` in the README's Configuration section."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    examples = []
    for line in re.findall(r"^dvc exp run .*$", section, re.MULTILINE):
        words = shlex.split(line.split("#")[0])
        examples.append([words[i + 1] for i, word in enumerate(words) if word == "-S"])
    return examples


def test_the_readme_finds_its_configuration_examples() -> None:
    examples = readme_configuration_examples()
    assert len(examples) >= 3 and ["model=lstm"] in examples


@pytest.mark.parametrize("overrides", readme_configuration_examples(), ids=" ".join)
def test_every_configuration_example_of_the_readme_composes_into_a_valid_config(overrides: list[str]) -> None:
    validate(compose(overrides, root=REPO_ROOT))
