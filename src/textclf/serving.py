"""The model as shipped: an MLflow pyfunc that takes raw text and returns labels and probabilities.

Each training logs one under the artifact name ``model``; it loads anywhere MLflow does
(``mlflow.pyfunc.load_model("runs:/<id>/model")``, ``models:/textclf@champion``,
``mlflow models serve``) without the processed data or this repository:

  artifacts/model.safetensors   the best checkpoint's weights (the LightningModule's state_dict, as
                                safetensors: tensors only, no pickle; tied tensors stored once)
  artifacts/hyperparameters.json  the checkpoint's hyperparameters, checked on load as a
                                checkpoint's are (textclf.models.checkpoint) before anything is built
  artifacts/encoder/            the text encoder preprocess fitted and saved (textclf.encoders):
                                encoder.json (its _target_ and settings) and its files (the regex
                                encoder's vocab.txt: line i is token id i, 0 <pad>, 1 <unk>; a
                                pretrained model's tokenizer/, as save_pretrained writes it)
  artifacts/labels.json         class names; index i is class i
  artifacts/calibration.json    {"temperature": T}: the probabilities are softmax(logits / T), T
                                fitted by evaluate on the validation split (1.0: calibration.method
                                none; see textclf.calibration)
  artifacts/thresholds.json     a multi-label model's only: {"thresholds": {label: t}}, tuned by
                                evaluate on the validation split (textclf.thresholds); its output
                                is then ``labels`` (see TextclfModel.predict)
  artifacts/config.yaml         the resolved config that trained it (secrets masked, as in the run's params)
  code/textclf/                 this package, so the model runs the code it was trained with
  pyfunc_model.py               the file MLflow runs to make the model (models-from-code: no pickle)

Asked with ``params={"explain": K}`` (declared in the signature, default 0: `mlflow models serve`
passes it on), the model adds an ``explanation`` column: per row a JSON string
[[token, contribution], ...] of the K tokens that weighed most on the predicted label
(textclf.explain, in calibrated-logit units); without it the columns are as ever.

A pretrained model (model=hf) needs neither its original directory nor the Hub: its weights are
in model.safetensors, its configuration in hyperparameters.json (``model.architecture``), its
tokenizer's files under encoder/tokenizer/. The DVC output models/model.ckpt stays a Lightning
checkpoint; only the shipped copy is converted.

Requirements are pinned explicitly to the versions installed here: MLflow's requirement
inference would reload the model and may reach for the network.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from textclf.calibration import calibrated
from textclf.data.datamodule import clip_documents, tokens_kept
from textclf.data.encoded import LABELS_FILE, read_labels
from textclf.encoders.base import load_encoder
from textclf.errors import TextclfError, first_line
from textclf.models.checkpoint import load_shipped, save_shipped
from textclf.redact import mask_userinfo, redact_config
from textclf.tracking import TrackingStore, mlflow_tracking_uri

MODEL_NAME = "model"  # artifact name: runs:/<run id>/model
# Models-from-code: MLflow copies this file into the model and runs it on load (after putting
# code/ on sys.path); it names TextclfModel, so the model holds no pickle (python_model.pkl).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
TEXT_COLUMN, LABEL_COLUMN = "text", "label"
LABELS_COLUMN = "labels"  # a multi-label model's: the labels each text gets, a list of strings
# params={"explain": K}: K > 0 adds this column, each row a JSON string [[token, contribution], ...]
# of the K tokens that pushed the predicted label most (textclf.explain); 0, the default, adds nothing.
EXPLAIN_PARAM, EXPLANATION_COLUMN = "explain", "explanation"
ENCODER_DIR, CONFIG_FILE = "encoder", "config.yaml"
WEIGHTS_FILE, HYPERPARAMETERS_FILE = "model.safetensors", "hyperparameters.json"
CALIBRATION_FILE = "calibration.json"
THRESHOLDS_FILE = "thresholds.json"  # multi-label models only
BATCH_SIZE = 256  # documents per forward pass
# What the bundled code imports at prediction time (distribution names).
REQUIREMENTS = (
    "mlflow",
    "cloudpickle",
    "torch",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "pydantic",
    "pyyaml",
    "pandas",
    "numpy",
    "safetensors",
    "captum",  # params={"explain": K} on the sequence models: integrated gradients (textclf.explain)
)
EXAMPLE_TEXTS = ["An example message to classify.", "Another one, with more words than the first."]


class ModelInputError(TextclfError, MlflowException):
    """Input the model cannot classify, in one line: a TextclfError to Python callers, and to
    ``mlflow models serve`` an INVALID_PARAMETER_VALUE (HTTP 400) whose JSON ``message`` is
    that line alone. (The scoring server prefixes an MlflowException's message with the
    request's data and answers any other exception with a stack trace and server paths.)"""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    def serialize_as_json(self) -> str:
        body = json.loads(super().serialize_as_json())
        body["message"] = str(self)  # the line itself: the server rewrites ``self.message``
        return json.dumps(body)


def texts_of(model_input: Any) -> list[str]:
    """A DataFrame with a ``text`` column, a Series, or a list of strings -> list of strings."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise ModelInputError(
                f"model input: expected a '{TEXT_COLUMN}' column (got columns {list(model_input.columns)})"
            )
        model_input = model_input[TEXT_COLUMN]
    if isinstance(model_input, str):
        model_input = [model_input]
    texts = list(model_input)
    for text in texts:  # None included (a JSON null)
        if not isinstance(text, str):
            raise ModelInputError(f"model input: every text must be a string (got {type(text).__name__}: {text!r:.60})")
    return texts


def explain_count(params: dict[str, Any] | None) -> int:
    """params -> K of ``{"explain": K}``, a whole number of tokens, 0 (no explanation) or more."""
    value = (params or {}).get(EXPLAIN_PARAM, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelInputError(
            f"params.{EXPLAIN_PARAM}: expected how many tokens to explain each prediction by, 0 (none) or more "
            f"(got {value!r:.40})"
        )
    return value


def read_temperature(path: Path) -> float:
    """calibration.json -> its temperature, a positive finite number; else one line naming the file."""
    try:
        temperature = json.loads(path.read_text(encoding="utf-8"))["temperature"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise TextclfError(f'{path}: refusing to load, expected {{"temperature": T}} ({error!r:.80})') from error
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise TextclfError(
            f"{path}: refusing to load, the temperature must be a positive number (got {temperature!r:.40})"
        )
    return float(temperature)


def read_thresholds(path: Path, labels: list[str]) -> list[float]:
    """thresholds.json -> one threshold in [0, 1] per label of ``labels``, in their order; else
    one line naming the file."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
        thresholds = [values[name] for name in labels]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise TextclfError(
            f'{path}: refusing to load, expected {{"thresholds": {{label: t}}}} for every label ({error!r:.80})'
        ) from error
    for threshold in thresholds:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise TextclfError(f"{path}: refusing to load, a threshold must be in [0, 1] (got {threshold!r:.40})")
    return [float(threshold) for threshold in thresholds]


class TextclfModel(mlflow.pyfunc.PythonModel):
    """Raw text -> the encoder preprocess used -> the trained classifier -> calibrated probabilities.

    Made by pyfunc_model.py, with no state; ``load_context`` reads every artifact into memory
    (the model directory can be removed once it returns)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = {name: Path(path) for name, path in context.artifacts.items()}
        self.encoder = load_encoder(artifacts["encoder"])  # builds only the project's own encoders
        self.labels: list[str] = json.loads(artifacts["labels"].read_text(encoding="utf-8"))
        self.module = load_shipped(artifacts["weights"], artifacts["hyperparameters"]).eval()
        self.max_len = tokens_kept(self.module.hparams.model)  # tokens kept per document, as in training
        self.temperature = read_temperature(artifacts["calibration"])
        # A multi-label model's thresholds (None: one label per text, the most probable).
        self.thresholds = read_thresholds(artifacts["thresholds"], self.labels) if "thresholds" in artifacts else None

    @torch.inference_mode()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """-> (N, C) float32 softmax(logits / temperature) over the classes (evaluate's
        calibrated probabilities; a multi-label model's sigmoid(logits / temperature) per
        label), in batches of BATCH_SIZE documents."""
        chunks = [torch.zeros(0, len(self.labels))]
        for start in range(0, len(texts), BATCH_SIZE):
            encoded = self.encoder.encode(texts[start : start + BATCH_SIZE])
            batch = clip_documents(encoded["tokens"], encoded["offsets"], encoded["lengths"], self.max_len)
            logits = self.module(batch).float()
            chunks.append(calibrated(logits, self.temperature, self.thresholds is not None))  # (B, C)
        return torch.cat(chunks)

    def explanations(self, texts: list[str], count: int) -> list[str]:
        """-> per text, a JSON list [[token, contribution], ...] of the ``count`` tokens whose
        summed contributions (textclf.explain) to its predicted class's calibrated logit
        (logit / temperature, the one the probabilities are a softmax of) are largest in
        absolute value, largest first. A text with no token the model knows
        (empty, or all <unk>) is refused in one line naming it: there is nothing to explain."""
        from textclf.explain import explain_batch

        placeholders = self.encoder.placeholder_ids()
        rows = []
        for start in range(0, len(texts), BATCH_SIZE):
            chunk = texts[start : start + BATCH_SIZE]
            encoded = self.encoder.encode(chunk)
            batch = clip_documents(encoded["tokens"], encoded["offsets"], encoded["lengths"], self.max_len)
            ids = batch["tokens"].split(batch["lengths"].tolist())
            for index, (text, document) in enumerate(zip(chunk, ids)):
                if all(token in placeholders for token in document.tolist()):
                    raise ModelInputError(
                        f"params.{EXPLAIN_PARAM}: text {start + index} ({text!r:.60}) has no token the model knows "
                        "(it is empty or every word is outside the vocabulary): nothing to explain"
                    )
            for explanation in explain_batch(self.module, self.encoder, batch):
                top = explanation.top(count)
                rows.append(json.dumps([[token, round(value / self.temperature, 6)] for token, value in top]))
        return rows

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """DataFrame with a ``text`` column -> DataFrame: ``label`` (the most probable class),
        then one probability column per class (float64, rows sum to 1), and with
        ``params={"explain": K}``, K > 0, an ``explanation`` column (``explanations``). Called
        directly, it also takes a list of strings. (MLflow infers no schema from a DataFrame
        hint, so the logged signature is the one that is enforced.)"""
        texts = texts_of(model_input)
        count = explain_count(params)
        probabilities = self.probabilities(texts)
        frame = pd.DataFrame(probabilities.double().numpy(), columns=self.labels)
        if self.thresholds is not None:
            if count:
                raise ModelInputError(
                    f"params.{EXPLAIN_PARAM}: a multi-label model's decisions are not explained (yet)"
                )
            return self.label_sets(probabilities, frame)
        frame.insert(0, LABEL_COLUMN, [self.labels[i] for i in probabilities.argmax(dim=1).tolist()])
        if count:
            frame[EXPLANATION_COLUMN] = self.explanations(texts, count)
        return frame

    def label_sets(self, probabilities: torch.Tensor, frame: pd.DataFrame) -> pd.DataFrame:
        """A multi-label model's output: ``labels``, the list of labels whose probability reaches
        its threshold (in label order; [] for none), then every label's probability (float64,
        each in [0, 1], not summing to one). ``mlflow models serve`` answers it as JSON:
        {"predictions": [{"labels": ["a", "b"], "a": 0.91, ...}, ...]}."""
        from textclf.thresholds import decide

        given = decide(probabilities, self.thresholds).tolist()
        chosen = [[name for name, has in zip(self.labels, row) if has] for row in given]
        frame.insert(0, LABELS_COLUMN, pd.Series(chosen, dtype=object))
        return frame


def signature(labels: list[str], explains: bool = False, multi_label: bool = False) -> mlflow.models.ModelSignature:
    """Text in; label and one probability per class out (a multi-label model's: ``labels``, a
    list, and every label's probability). With ``explains`` (TextclfModel), the param
    ``explain`` (long, default 0), which `mlflow models serve` passes on only because the
    signature declares it, and the optional ``explanation`` column it adds."""
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    first = ColSpec(Array("string"), LABELS_COLUMN) if multi_label else ColSpec("string", LABEL_COLUMN)
    outputs = [first, *(ColSpec("double", name) for name in labels)]
    if explains:
        outputs.append(ColSpec("string", EXPLANATION_COLUMN, required=False))
    return mlflow.models.ModelSignature(
        inputs=Schema([ColSpec("string", TEXT_COLUMN)]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec(EXPLAIN_PARAM, "long", 0)]) if explains else None,
    )


def shareable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with secrets masked (URL passwords, token-like keys; see redact_secrets):
    a shipped model travels further than the run it came from."""
    return redact_config(config)


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` of every runtime dependency and of ``extra`` (the encoder's: a
    pretrained tokenizer needs transformers), as installed here (local tags such as torch's
    ``+cpu`` dropped, so any build of that release satisfies it)."""
    names = dict.fromkeys((*REQUIREMENTS, *extra))  # in order, each once
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in names]


def model_requirements(model: dict[str, Any]) -> tuple[str, ...]:
    """What the backbone of the config section ``model`` imports beyond REQUIREMENTS: peft
    for LoRA adapters (models/hf.py, model.lora.r set)."""
    lora = model.get("lora")
    return ("peft",) if isinstance(lora, dict) and lora.get("r") is not None else ()


def pack(
    staging: Path,
    checkpoint: Path,
    processed: Path,
    config: dict[str, Any],
    temperature: float,
    thresholds: list[float] | None = None,
) -> dict[str, str]:
    """Writes the model's files into ``staging``; returns {artifact name: path} for MLflow.

    The checkpoint is loaded (so checked) and written as safetensors weights and JSON
    hyperparameters; the encoder is loaded from ``processed`` and saved again (so only an
    encoder that loads is shipped, with exactly the files it reads back: a pretrained
    tokenizer's files, never the model's directory, whose weights are the checkpoint's);
    ``config`` is saved with secrets masked; ``temperature`` (evaluate's) as calibration.json,
    a multi-label model's ``thresholds`` (evaluate's, one per label) as thresholds.json."""
    if not 0 < temperature < math.inf:
        raise TextclfError(f"temperature {temperature}: must be a positive number to ship the model")
    files = {
        "weights": WEIGHTS_FILE,
        "hyperparameters": HYPERPARAMETERS_FILE,
        "encoder": ENCODER_DIR,
        "labels": LABELS_FILE,
        "config": CONFIG_FILE,
        "calibration": CALIBRATION_FILE,
    }
    (staging / ENCODER_DIR).mkdir()
    load_encoder(processed).save(staging / ENCODER_DIR)
    (staging / CONFIG_FILE).write_text(yaml.safe_dump(shareable_config(config), sort_keys=False), encoding="utf-8")
    shutil.copyfile(processed / LABELS_FILE, staging / LABELS_FILE)
    (staging / CALIBRATION_FILE).write_text(json.dumps({"temperature": temperature}) + "\n", encoding="utf-8")
    save_shipped(checkpoint, staging / WEIGHTS_FILE, staging / HYPERPARAMETERS_FILE)
    if thresholds is not None:
        labels = read_labels(processed)
        text = json.dumps({"thresholds": dict(zip(labels, thresholds, strict=True))}, indent=2, ensure_ascii=False)
        (staging / THRESHOLDS_FILE).write_text(text + "\n", encoding="utf-8")
        files["thresholds"] = THRESHOLDS_FILE
    return {name: str(staging / file) for name, file in files.items()}


def log_model(
    uri: str,
    run_id: str,
    checkpoint: Path,
    processed: Path,
    config: dict[str, Any],
    temperature: float,
    thresholds: list[float] | None = None,
) -> str:
    """Logs the pyfunc model to run ``run_id`` as ``model``; returns its URI (runs:/<id>/model).

    ``checkpoint`` is the best checkpoint, ``processed`` the directory holding the encoder
    and labels it was trained on (as preprocess saved them), ``config`` the resolved config
    that trained it (shipped as config.yaml), ``temperature`` the one evaluate fitted on the
    validation split (textclf.calibration; 1.0 ships the softmax as trained), ``thresholds`` a
    multi-label model's (textclf.thresholds), which make its output a set of labels per text."""
    labels = read_labels(processed)
    for column in (LABEL_COLUMN, EXPLANATION_COLUMN):
        if column in labels:
            raise TextclfError(f"a class is named '{column}', which clashes with the prediction column")
    with tempfile.TemporaryDirectory(prefix="textclf-model-") as tmp:
        artifacts = pack(Path(tmp), checkpoint, processed, config, temperature, thresholds)
        encoder = load_encoder(Path(artifacts["encoder"]))
        requirements = pip_requirements((*encoder.requirements, *model_requirements(config["model"])))
        multi_label = thresholds is not None  # explanations are of single-label decisions
        log_pyfunc(
            uri, run_id, MODEL_CODE, artifacts, labels, requirements, explains=not multi_label, multi_label=multi_label
        )
    return f"runs:/{run_id}/{MODEL_NAME}"


def log_pyfunc(
    uri: str,
    run_id: str,
    code_file: Path,
    artifacts: dict[str, str],
    labels: list[str],
    requirements: list[str],
    explains: bool = False,
    multi_label: bool = False,
) -> None:
    """Logs a models-from-code pyfunc to run ``run_id`` as ``model`` (runs:/<id>/model):
    ``code_file`` (pyfunc_model.py, or the ensemble's) names the model class, ``artifacts``
    {name: path} are the files it loads, with this package as its code and the signature of
    ``labels`` (text in; label and one probability per class out; ``explains``: the explain
    param too, see ``signature``)."""
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="textclf-code-") as tmp:
        code = Path(tmp) / package.name  # the package, without bytecode caches
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        try:
            with mlflow_tracking_uri(uri):  # model logging reads MLflow's process-wide tracking URI
                store = TrackingStore(uri)
                run = store.get_run(run_id)
                # Created here, in the run's experiment: left to itself MLflow files a model logged
                # outside an active run under the default experiment, where runs:/ cannot find it.
                model = store.call(  # one write, so safe to repeat (parallel jobs, one store)
                    mlflow.initialize_logged_model,
                    name=MODEL_NAME,
                    source_run_id=run_id,
                    params=run.data.params,
                    experiment_id=run.info.experiment_id,
                )
                # Model.log rather than pyfunc.log_model: it takes the run explicitly, so the run
                # Lightning opened is neither made the active run nor ended here.
                mlflow.models.Model.log(
                    artifact_path=None,
                    name=MODEL_NAME,
                    flavor=mlflow.pyfunc,
                    run_id=run_id,
                    model_id=model.model_id,
                    python_model=str(code_file),
                    artifacts=artifacts,
                    code_paths=[str(code)],
                    signature=signature(labels, explains, multi_label),
                    input_example=pd.DataFrame({TEXT_COLUMN: EXAMPLE_TEXTS}),
                    pip_requirements=requirements,
                )
        except MlflowException as error:
            raise TextclfError(
                f"cannot log the model to run {run_id} in {mask_userinfo(uri)}: {first_line(error)}"
            ) from error
