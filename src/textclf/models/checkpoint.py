"""Loading a checkpoint as data: tensors and plain values, checked before anything is built.

A checkpoint holds ``state_dict`` (the weights) and ``hyper_parameters``: the ``model``,
``optimizer`` and ``scheduler`` config sections, ``vocab_size``, ``num_classes``,
``label_smoothing``, ``class_weights``, ``loss`` and ``multi_label`` that TextClassifier was built with. ``torch.load(weights_only=True)``
refuses pickled code, but the sections name what gets built (``_target_``), so a tampered
file could still name ``os.system`` or nest one ``_target_`` inside another. They are
therefore checked as the config is (config.py: the project's own targets only, arguments
against the constructor's signature, plain values), and only then is anything built.

The shipped model (textclf.serving) carries the same two things in formats that hold no
pickle at all: the weights as safetensors (``save_shipped``/``load_shipped``: the module's
state_dict, tensors shared by several names stored once) and the hyperparameters as JSON,
checked exactly as a checkpoint's are before the module is built.
"""

from __future__ import annotations

import json
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
from textclf.models.losses import LossName


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
    loss: LossName = "cross_entropy"  # the same
    multi_label: bool = False  # the same


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


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """-> a checkpoint's contents, unpickled with weights_only=True (tensors and plain data:
    no code runs), with a ``state_dict``; anything else is refused in one line naming the file."""
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextclfError(f"{checkpoint}: refusing to load, not a plain weights checkpoint ({reason})") from error
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise TextclfError(f"{checkpoint}: refusing to load, not a Lightning checkpoint (no state_dict)")
    return data


def build_checked(hyperparameters: Any, source: Path) -> TextClassifier:
    """-> the TextClassifier ``hyperparameters`` describe, built only once they pass
    check_hyperparameters (its weights as initialised: the caller loads them); ``source`` is
    the file they came from, named in the one-line refusal."""
    problems = check_hyperparameters(hyperparameters)
    if problems:
        raise TextclfError(f"{source}: refusing to load, " + "; ".join(problems))
    return TextClassifier(**hyperparameters)


def _weights_refused(source: Path, error: RuntimeError) -> TextclfError:
    reason = str(error).strip().splitlines()[0]
    return TextclfError(f"{source}: refusing to load, its weights do not fit its hyperparameters ({reason})")


def load_checkpoint(checkpoint: Path) -> TextClassifier:
    """-> the TextClassifier a checkpoint holds, on the CPU: read as data (read_checkpoint), its
    hyperparameters checked before the module is built, its weights loaded strictly."""
    return _module_of(read_checkpoint(checkpoint), checkpoint)


def _module_of(data: dict[str, Any], checkpoint: Path) -> TextClassifier:
    module = build_checked(data.get("hyper_parameters"), checkpoint)
    try:
        module.load_state_dict(data["state_dict"])  # strict: every weight present, none extra
    except RuntimeError as error:
        raise _weights_refused(checkpoint, error) from error
    return module


def save_shipped(checkpoint: Path, weights: Path, hyperparameters: Path) -> None:
    """Writes the module a checkpoint holds as the shipped model carries it: ``weights`` (a
    safetensors file of its state_dict) and ``hyperparameters`` (JSON). The checkpoint is
    loaded (and so checked) first: only a model that loads is shipped."""
    from safetensors.torch import save_model

    data = read_checkpoint(checkpoint)
    module = _module_of(data, checkpoint)
    # save_model, not save_file: a tensor tied to another (an encoder's input and output
    # embeddings) is one storage under two names, which safetensors stores once.
    save_model(module, str(weights), force_contiguous=True)
    text = json.dumps(data["hyper_parameters"], indent=2, allow_nan=False)  # plain data, as checked
    if json.loads(text) != data["hyper_parameters"]:  # a tuple would come back a list
        raise TextclfError(f"{checkpoint}: its hyperparameters do not survive JSON, so the model cannot be shipped")
    hyperparameters.write_text(text + "\n", encoding="utf-8")


def load_shipped(weights: Path, hyperparameters: Path) -> TextClassifier:
    """-> the TextClassifier of a shipped model, on the CPU: ``hyperparameters`` (JSON) checked
    exactly as a checkpoint's are before the module is built, then ``weights`` (safetensors:
    tensors only, no pickle) loaded strictly; anything else is refused in one line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        values = json.loads(hyperparameters.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise TextclfError(f"{hyperparameters}: refusing to load, not JSON ({error})") from error
    module = build_checked(values, hyperparameters)
    try:
        load_model(module, weights, strict=True)  # every weight present, none extra, shapes equal
    except SafetensorError as error:
        raise TextclfError(f"{weights}: refusing to load, not a safetensors file ({error})") from error
    except RuntimeError as error:
        raise _weights_refused(weights, error) from error
    return module
