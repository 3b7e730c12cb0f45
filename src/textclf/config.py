"""The configuration schema: conf/ is composed into params.yaml, validated here before any work.

Defaults live only in conf/. The schema below holds types and ranges, never values, so a
key missing from conf/ is an error rather than a silently different default. Sections built
with ``_target_`` (model, scheduler) are checked against the signature of the object they
build: the constructor's own annotations (``Annotated[int, Field(gt=0)]``) are the schema.
What a section may build is a fixed list of the project's own classes (TARGETS): a
checkpoint's hyperparameters are these sections too, and loading one must build nothing else.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from textclf.errors import TextclfError
from textclf.metrics import MonitorName
from textclf.redact import mask_userinfo

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class _Section(BaseModel):
    """A config section: every key required (defaults live in conf/), unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DataConfig(_Section):
    """The keys every data source shares; the source's own keys (``data.path``, ``data.url``,
    ...) are its constructor's arguments, checked against its signature (``_target_``)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    target: str = Field(alias="_target_")
    corpus: str = Field(min_length=1)  # the corpus's name, as the runs are tagged (data_name)
    # Held out when the source has no such split: the test split from all documents, the
    # validation split from the training documents left; stratified and seeded, or the last
    # of each class in source order (textclf.data.splits).
    test_fraction: Annotated[float, Field(gt=0, lt=1)]
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    split_seed: NonNegativeInt
    # Defaulted (unlike its neighbours): configs logged before it existed held out at random.
    holdout: Literal["stratified", "last"] = "stratified"
    # Several labels per text (textclf.data.labels): auto when the label column holds lists (or
    # data.label_separator splits it); true: every text's labels are a set; false: one label each.
    multi_label: Literal["auto"] | bool
    max_document_bytes: PositiveInt | None  # null: no limit
    max_archive_bytes: PositiveInt | None
    max_download_bytes: PositiveInt | None

    @property
    def source_options(self) -> dict[str, Any]:
        """The source's own keys, with its ``_target_``: what ``build("data", ...)`` takes."""
        return {"_target_": self.target, **(self.model_extra or {})}


# The data keys that belong to the pipeline rather than to the source.
COMMON_DATA_KEYS = frozenset(field.alias or name for name, field in DataConfig.model_fields.items()) - {"_target_"}


LossName = Literal["cross_entropy", "squared_hinge"]  # train.loss; see textclf.models.losses


class TrainConfig(_Section):
    batch_size: PositiveInt
    eval_batch_size: PositiveInt
    num_workers: NonNegativeInt
    label_smoothing: Fraction
    class_weights: Literal["balanced"] | None  # balanced: loss weights n / (C * n_c); null: none
    loss: LossName  # textclf.models.losses
    num_threads: PositiveInt | None
    length_buckets: PositiveInt | None
    # Multi-label only: decision thresholds tuned on the validation split by evaluate
    # (textclf.thresholds): one for every label, or one per label.
    threshold: Literal["global", "per_label"]
    monitor: MonitorName  # selects the checkpoint; its mode (max or min) is textclf.metrics.mode
    resume_interval_s: NonNegativeFloat | None  # 0: a resume point every epoch; null: none
    resume_keep_s: NonNegativeFloat | None  # a dead training's resume point is deleted after; null: never


class CalibrationConfig(_Section):
    """What evaluate does to the probabilities it ships (textclf.calibration)."""

    method: Literal["temperature", "none"]  # temperature: T fitted on the validation split; none: T = 1


class EnsembleConfig(_Section):
    """A preset that trains several members and combines them (conf/experiment/best.yaml): a
    Hydra sweep, one job per member (conf/member/), then textclf.ensemble.EnsembleCallback."""

    pretrained: str | None = None  # the pretrained member's model (a local directory or a Hub id)
    combine: Literal["mean", "log"] | None = None  # null: the one with the lower validation NLL


# What each built section may name: every class or function the project builds from a config
# section or a checkpoint's hyperparameters. Imported by name only once a name is found here.
TARGETS = {
    "data": (
        "textclf.data.sources.usenet.UsenetArchive",
        "textclf.data.sources.folder.Folder",
        "textclf.data.sources.table.Table",
        "textclf.data.sources.hf.HuggingFaceDataset",
    ),
    "encoder": (
        "textclf.encoders.regex.RegexEncoder",
        "textclf.encoders.ngrams.NgramEncoder",
        "textclf.encoders.hf.HuggingFaceTokenizer",
    ),
    "model": (
        "textclf.models.fasttext.FastText",
        "textclf.models.linear.LinearClassifier",
        "textclf.models.lstm.LSTMClassifier",
        "textclf.models.transformer.TransformerClassifier",
        "textclf.models.hf.HuggingFaceClassifier",
    ),
    "optimizer": ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"),
    "scheduler": (
        "textclf.models.schedules.constant",
        "textclf.models.schedules.cosine",
        "textclf.models.schedules.linear_warmup",
    ),
}


class OptimizerConfig(_Section):
    target: Literal[TARGETS["optimizer"]] = Field(alias="_target_")  # type: ignore[valid-type]
    partial: Literal[True] = Field(alias="_partial_")
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    momentum: NonNegativeFloat | None = None  # SGD only: conf/optimizer/sgd.yaml sets it
    nesterov: bool | None = None  # SGD only
    fused: bool | None = None  # Adam and AdamW: one kernel for all parameters (conf/optimizer/adam.yaml)


class TrainerConfig(_Section):
    """The lightning.pytorch.Trainer arguments this project supports."""

    target: Literal["lightning.pytorch.Trainer", "lightning.Trainer"] = Field(alias="_target_")
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"]
    devices: Annotated[int, Field(ge=-1)] | str | list[NonNegativeInt]
    num_nodes: PositiveInt
    strategy: str
    precision: Literal["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true"]
    max_epochs: PositiveInt
    accumulate_grad_batches: PositiveInt
    log_every_n_steps: PositiveInt
    gradient_clip_val: PositiveFloat | None
    deterministic: bool
    num_sanity_val_steps: NonNegativeInt
    enable_progress_bar: bool


class TrackingConfig(_Section):
    uri: str | None
    experiment_name: str = Field(min_length=1)
    run_name: str | None
    flush_every: int = Field(gt=0, le=1000)  # metric values per MLflow write (1000: its limit per request)
    flush_interval_s: PositiveFloat  # ... and at least this often, so the UI follows a run


class PathsConfig(_Section):
    raw: Path
    processed: Path
    models: Path
    reports: Path
    cache: Path
    inputs: list[str]  # the local inputs DVC watches (conf/config.yaml: textclf.local_inputs)
    model_files: str  # the pretrained model's local directory DVC watches (textclf.local_model)


class Config(_Section):
    """The whole of params.yaml. ``model`` and ``scheduler`` are checked by their targets."""

    seed: NonNegativeInt
    data: DataConfig
    encoder: dict[str, Any]
    model: dict[str, Any]
    optimizer: OptimizerConfig
    scheduler: dict[str, Any]
    trainer: TrainerConfig
    tracking: TrackingConfig
    train: TrainConfig
    calibration: CalibrationConfig
    paths: PathsConfig
    ensemble: EnsembleConfig | None = None  # only in ensemble presets (+experiment=best)
    raw: DictConfig | None = Field(default=None, exclude=True)  # the validated input, as given

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# Arguments the pipeline supplies when it builds an object, so they are not config keys.
RUNTIME_ARGUMENTS = {
    "data": ("limits", "downloads"),
    "encoder": (),
    "model": ("vocab_size", "num_classes"),
    "scheduler": ("optimizer", "total_steps"),
}
# Whether a section is built as a partial, finished with its runtime arguments later
# (``_partial_: true``; the optimizer's is fixed by OptimizerConfig).
PARTIAL = {"data": False, "encoder": False, "model": False, "optimizer": True, "scheduler": True}
# The built sections each stage checks (and so imports): the data stages build the source and
# the encoder, train and evaluate the model and its schedule (see ``validate``).
DATA_SECTIONS = ("data", "encoder")
MODEL_SECTIONS = ("model", "scheduler")
ALL_SECTIONS = DATA_SECTIONS + MODEL_SECTIONS


def build(section: str, values: Mapping[str, Any], **runtime: Any) -> Any:
    """A ``_target_`` section -> what it names, called with its other keys and ``runtime``
    (a ``functools.partial`` for the sections built later; the same call Hydra's instantiate
    makes). Only the project's own classes (TARGETS) are ever built: the sections come from a
    validated config or from a checkpoint that load_checkpoint checked first."""
    import functools

    from hydra.utils import get_object

    target = values.get("_target_")
    if target not in TARGETS[section]:
        known = ", ".join(TARGETS[section])
        raise TextclfError(f"{section}._target_: refusing to build {target!r} (not one of: {known})")
    arguments = {key: value for key, value in values.items() if key not in ("_target_", "_partial_")}
    made = get_object(target)
    if PARTIAL[section]:
        return functools.partial(made, **arguments, **runtime)
    return made(**arguments, **runtime)


def _check_target_section(section: str, values: Mapping[str, Any]) -> list[str]:
    """Checks a ``_target_`` section against the signature of what it builds: a name in
    TARGETS[section], arguments its signature takes, values its annotations accept (so plain
    data: a nested ``_target_`` is a mapping where a number or a string is expected)."""
    target = values.get("_target_")
    if not isinstance(target, str):
        return [f"{section}._target_: missing (the class or function to build)"]
    if target not in TARGETS[section]:
        return [f"{section}._target_: cannot import {target!r} (not one of: {', '.join(TARGETS[section])})"]
    try:
        from hydra.utils import get_object  # here: importing config loads no model module

        built = get_object(target)
    except Exception:  # noqa: BLE001 - Hydra raises several types for an unimportable path
        return [f"{section}._target_: cannot import '{target}'"]
    parameters = inspect.signature(built, eval_str=True).parameters  # annotations as types, from their module
    allowed = [name for name in parameters if name not in RUNTIME_ARGUMENTS[section]]
    problems = []
    if values.get("_partial_", False) is not PARTIAL[section]:
        expected = str(PARTIAL[section]).lower()
        problems.append(f"{section}._partial_: must be {expected} (got {values['_partial_']!r})")
    for key, value in values.items():
        if key in ("_target_", "_partial_"):
            continue
        if key not in allowed:
            problems.append(f"{section}.{key}: unknown key for {target} (expected one of: {', '.join(allowed)})")
            continue
        annotation = parameters[key].annotation
        if annotation is inspect.Parameter.empty:
            continue
        try:
            TypeAdapter(annotation).validate_python(value, strict=False)
        except ValidationError as error:
            problems.append(_value_problem(f"{section}.{key}", value, error))
    for name in allowed:
        parameter = parameters[name]
        if parameter.default is inspect.Parameter.empty and name not in values:
            problems.append(f"{section}.{name}: missing (required by {target})")
    return problems


def _value_problem(key: str, value: Any, error: ValidationError) -> str:
    """The first error of a value, named by its key and, inside a mapping, the key within it
    (``model.lora.r: input should be greater than 0 (got 0)``)."""
    first = error.errors()[0]
    for part in first["loc"]:  # the path into the value; a union's member names are not keys of it
        if not isinstance(value, Mapping) or part not in value:
            break
        key, value = f"{key}.{part}", value[part]
    return f"{key}: {first['msg'].lower()} (got {value!r})"


def _format_pydantic(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{key}: missing")
        else:
            lines.append(f"{key}: {item['msg'].lower()} (got {item.get('input')!r})")
    return lines


# URL userinfo: "scheme://" then everything up to the last "@" before the host's end.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^/?#\s]*)@")
# Schemes whose bare userinfo ("https://TOKEN@host") is a secret; for a database URL
# ("postgresql://user@host/db") it is a user name, and only a password is refused.
_TOKEN_SCHEMES = frozenset({"http", "https", "ftp", "file", "s3", "gs", "ws", "wss"})
DOWNLOAD_AUTH_HINT = (
    "use ~/.netrc, or $TEXTCLF_DOWNLOAD_AUTH=user:password or $TEXTCLF_DOWNLOAD_TOKEN=<token> "
    "(README: Running on the real corpus offline)"
)
CREDENTIAL_HINTS = {
    "tracking.uri": "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead",
    "data.url": DOWNLOAD_AUTH_HINT,
    "data.mirrors": DOWNLOAD_AUTH_HINT,
}
DEFAULT_CREDENTIAL_HINT = "pass them in the environment or a file the client reads (~/.netrc, ~/.pgpass, PGPASSWORD)"


def credentials_in_url(text: str) -> bool:
    """True when ``text`` holds a URL with a password (``user:pw@``) or, for web and storage
    schemes, any userinfo (``https://TOKEN@host``)."""
    for match in _USERINFO.finditer(text):
        scheme, userinfo = match.group(1).lower(), match.group(2)
        if ":" in userinfo or scheme in _TOKEN_SCHEMES:
            return True
    return False


def credential_problems(values: Any, prefix: str = "") -> list[str]:
    """One problem per config value that carries credentials in a URL. Params end up in
    params.yaml, dvc.lock (committed by `dvc exp run` into git), Hydra's output directories and
    MLflow, so a secret must never be a param."""
    if isinstance(values, Mapping):
        return [problem for key, value in values.items() for problem in credential_problems(value, f"{prefix}{key}.")]
    key = prefix.rstrip(".")
    if isinstance(values, (list, tuple)):  # data.mirrors: the list is named, not the item
        return next((credential_problems(item, prefix) for item in values if credential_problems(item, prefix)), [])
    if not isinstance(values, str) or not credentials_in_url(values):
        return []
    hint = CREDENTIAL_HINTS.get(key, DEFAULT_CREDENTIAL_HINT)
    if key == "tracking.uri" and not values.lower().startswith(("http://", "https://")):
        hint = DEFAULT_CREDENTIAL_HINT  # a database store: its client reads ~/.pgpass, PGPASSWORD
    return [
        f"{key}: {mask_userinfo(values)} has credentials in the URL, and params go into params.yaml, "
        f"dvc.lock and git: remove them; {hint}"
    ]


def validate(
    cfg: DictConfig | Mapping[str, Any], source: str = "config", targets: tuple[str, ...] = ALL_SECTIONS
) -> Config:
    """Validates the whole config; raises one TextclfError that lists every problem.

    ``targets``: the ``_target_`` sections also checked against the signatures of what they
    build, which imports those modules. The data stages check DATA_SECTIONS and train and
    evaluate MODEL_SECTIONS, so an edit to a model's code reruns neither download nor
    preprocess (dvc.yaml lists only the modules a stage runs), nor an edit to a source train."""
    container = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    values = OmegaConf.to_container(container, resolve=True)
    problems: list[str] = credential_problems(values)
    try:
        parsed = Config.model_validate(values)
    except ValidationError as error:
        problems.extend(_format_pydantic(error))
        parsed = None
    for section in targets:
        section_values = values.get(section)
        if section == "data" and isinstance(section_values, dict):  # the source's own keys only
            section_values = {k: v for k, v in section_values.items() if k not in COMMON_DATA_KEYS}
        if isinstance(section_values, dict):
            problems.extend(_check_target_section(section, section_values))
    model, trainer = values.get("model"), values.get("trainer")
    problems.extend(_check_sparse(model, values.get("optimizer"), trainer))
    train = values.get("train")
    if isinstance(train, dict) and train.get("loss") == "squared_hinge" and train.get("label_smoothing"):
        problems.append(
            f"train.label_smoothing={train['label_smoothing']} applies to cross-entropy only "
            "(set train.label_smoothing=0 with train.loss=squared_hinge)"
        )
    problems.extend(_check_pretrained(model, values.get("encoder")))
    problems.extend(_check_lora(model))
    problems.extend(_check_devices(trainer))
    if problems:
        raise TextclfError(f"invalid {source}: " + "; ".join(problems))
    assert parsed is not None
    return parsed.model_copy(update={"raw": container})


def _check_pretrained(model: Any, encoder: Any) -> list[str]:
    """A pretrained model reads the ids of its own tokenizer: encoder=hf, with the model's name,
    max_len and max_chunks (conf/encoder/hf.yaml takes them from the model section)."""
    if not isinstance(model, dict) or model.get("_target_") != "textclf.models.hf.HuggingFaceClassifier":
        return []
    if not isinstance(encoder, dict) or encoder.get("_target_") != "textclf.encoders.hf.HuggingFaceTokenizer":
        target = encoder.get("_target_") if isinstance(encoder, dict) else None
        return [f"encoder._target_: model=hf reads the ids of the model's own tokenizer (encoder=hf), not {target!r}"]
    if model.get("name") == "???":  # conf/model/hf.yaml's placeholder, left unresolved by compose
        return ["model.name: missing (a local directory or a Hub id: -S model.name=...)"]
    return [
        f"encoder.{key}: {encoder.get(key)!r} is not model.{key} ({model.get(key)!r}); the tokenizer must be the model's"
        for key in ("name", "max_len", "max_chunks")
        if encoder.get(key) != model.get(key)
    ]


def _check_sparse(model: Any, optimizer: Any, trainer: Any) -> list[str]:
    """Sparse embedding tables (model.sparse: true) get sparse gradients, stepped by SparseAdam
    (models/optim.py): no clipping (it needs dense gradients) and no weight decay (SparseAdam
    has none, so the decay asked for would never reach them)."""
    if not isinstance(model, dict) or not model.get("sparse"):
        return []
    problems = []
    if isinstance(trainer, dict) and trainer.get("gradient_clip_val") is not None:
        problems.append(
            "model.sparse: true cannot be combined with trainer.gradient_clip_val "
            "(clipping needs dense gradients; set model.sparse=false or trainer.gradient_clip_val=null)"
        )
    if isinstance(optimizer, dict) and optimizer.get("weight_decay"):
        problems.append(
            f"optimizer.weight_decay={optimizer['weight_decay']} would not reach the model.sparse: true "
            "embedding tables (SparseAdam steps them, without weight decay; set model.sparse=false to decay them, "
            "or optimizer.weight_decay=0)"
        )
    return problems


def _check_lora(model: Any) -> list[str]:
    """LoRA adapters (model.lora.r set, models/hf.py) need peft installed, and an encoder that
    trains (with model.freeze_encoder=true they would stay as they start, doing nothing)."""
    lora = model.get("lora") if isinstance(model, dict) else None
    if not isinstance(lora, Mapping) or lora.get("r") is None:
        return []
    import importlib.util

    r = lora["r"]
    problems = []
    if importlib.util.find_spec("peft") is None:  # found, not imported: validating stays cheap
        problems.append(f'model.lora.r={r} needs peft: pip install "textclf[lora]"')
    if model.get("freeze_encoder") is True:
        problems.append(
            f"model.lora.r={r} trains adapters inside the encoder, which model.freeze_encoder=true freezes: "
            "set one of model.lora.r=null or model.freeze_encoder=false"
        )
    return problems


def _check_devices(trainer: Any) -> list[str]:
    """trainer.devices asks for at least one device (the schema admits -1 and strings such as
    "auto" or "0,1", which Lightning parses; 0, "0" and [] ask for none)."""
    if not isinstance(trainer, dict):
        return []
    devices = trainer.get("devices")
    if devices in (0, "0", []) and not isinstance(devices, bool):
        return [f"trainer.devices: {devices!r} asks for no device (a count such as 1, -1 for all, or a list of ids)"]
    return []


def load_params(path: str | Path = "params.yaml", targets: tuple[str, ...] = ALL_SECTIONS) -> Config:
    """Reads and validates params.yaml (the composition of conf/, written by DVC or by hand)."""
    path = Path(path)
    if not path.is_file():
        raise TextclfError(f"{path}: not found (run from the repository root, or pass --params)")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise TextclfError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from error
    if not isinstance(values, dict):
        raise TextclfError(f"{path}: expected a mapping of config sections")
    if values.get("ensemble") is not None:
        raise TextclfError(
            f"{path}: has an ensemble section, from an ensemble preset (+experiment=best), which trains its "
            "members in a Hydra sweep and a stage trains one model: run `python -m textclf +experiment=best` instead"
        )
    return validate(values, source=str(path), targets=targets)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (what params.yaml holds)."""
    return OmegaConf.to_container(cfg.raw, resolve=True)  # type: ignore[return-value]
