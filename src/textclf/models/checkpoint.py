"""Loading a checkpoint as data: tensors and plain values, checked before anything is built.

A checkpoint holds ``state_dict`` (the weights) and ``hyper_parameters``: the ``model``,
``optimizer`` and ``scheduler`` config sections, ``vocab_size``, ``num_classes`` and
``label_smoothing`` that TextClassifier was built with. ``torch.load(weights_only=True)``
refuses pickled code, but the sections name what gets built (``_target_``), so a tampered
file could still name ``os.system`` or nest one ``_target_`` inside another. They are
therefore checked as the config is (config.py: the project's own targets only, arguments
against the constructor's signature, plain values), and only then is anything built.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, ValidationError

from textclf.config import (
    Fraction,
    OptimizerConfig,
    PositiveInt,
    _check_target_section,
    _format_pydantic,
    _Section,
)
from textclf.errors import TextclfError
from textclf.models.classifier import TextClassifier


class Hyperparameters(_Section):
    """``hyper_parameters`` of a checkpoint: TextClassifier's arguments, nothing else. The
    model and scheduler sections are checked by their targets (config._check_target_section)."""

    model: dict[str, Any]
    optimizer: OptimizerConfig
    scheduler: dict[str, Any]
    vocab_size: PositiveInt
    num_classes: PositiveInt
    label_smoothing: Fraction = 0.0  # TextClassifier's default: checkpoints from before it
    class_weights: list[Annotated[float, Field(gt=0)]] | None = None  # the same


def check_hyperparameters(values: Any) -> list[str]:
    """-> every problem with a checkpoint's ``hyper_parameters``, each naming its key."""
    if not isinstance(values, dict):
        return [f"hyper_parameters: expected a mapping (got {type(values).__name__})"]
    problems = []
    try:
        Hyperparameters.model_validate(values, strict=True)  # "3" is no vocab_size
    except ValidationError as error:
        problems.extend(f"hyper_parameters.{line}" for line in _format_pydantic(error))
    for section in ("model", "scheduler"):
        if isinstance(values.get(section), dict):
            problems.extend(f"hyper_parameters.{line}" for line in _check_target_section(section, values[section]))
    return problems


def load_checkpoint(checkpoint: Path) -> TextClassifier:
    """-> the TextClassifier a checkpoint holds, on the CPU. Unpickled with weights_only=True
    (tensors and plain data: no code runs), its hyperparameters checked before the module is
    built; anything else is refused in one line naming the file."""
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextclfError(f"{checkpoint}: refusing to load, not a plain weights checkpoint ({reason})") from error
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise TextclfError(f"{checkpoint}: refusing to load, not a Lightning checkpoint (no state_dict)")
    problems = check_hyperparameters(data.get("hyper_parameters"))
    if problems:
        raise TextclfError(f"{checkpoint}: refusing to load, " + "; ".join(problems))
    module = TextClassifier(**data["hyper_parameters"])
    try:
        module.load_state_dict(data["state_dict"])  # strict: every weight present, none extra
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise TextclfError(
            f"{checkpoint}: refusing to load, its weights do not fit its hyperparameters ({reason})"
        ) from error
    return module
