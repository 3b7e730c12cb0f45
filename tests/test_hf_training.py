"""Fine-tuning a pretrained encoder (model=hf): the optimizer's groups (no weight decay on biases
and norms, layer-wise learning-rate decay), gradient checkpointing, LoRA adapters through peft,
gradient accumulation and bf16 mixed precision on the CPU.

The "pretrained" model is a tiny random BERT built here (2 layers, 32 wide), saved under tmp_path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from hf_models import build_tiny_bert, hf_config, prepare
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from textclf.calibration import calibrated
from textclf.config import Config, build, to_dict, validate
from textclf.data.datamodule import TextDataModule
from textclf.errors import TextclfError
from textclf.models.checkpoint import load_checkpoint
from textclf.models.classifier import TextClassifier
from textclf.models.optim import build_optimizer
from textclf.params import compose
from textclf.stages.evaluate import predict
from textclf.stages.train import build_datamodule, build_module, build_trainer
from textclf.tracking import mlflow_tracking_uri

from conftest import REPO_ROOT
from corpora import texts, write_table


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenizers and torch on one core: these tests run beside others."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_training(tmp_path: Path, model: Path, *overrides: str) -> Config:
    """model=hf on 24 documents of 3 classes (16 to train: 4 batches of 4), 32 tokens, no schedule."""
    table = write_table(tmp_path / "train.csv", texts(per_class=8))
    return hf_config(
        tmp_path,
        model,
        "data=table",
        f"data.train={table}",
        "model.max_len=32",
        "scheduler=none",
        "optimizer.lr=0.003",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        "train.resume_interval_s=null",
        *overrides,
    )


def fit(cfg: Config, callbacks: list[Callback] | None = None) -> tuple[TextClassifier, TextDataModule]:
    """The train stage's Trainer, module and data (without MLflow): prepared, then fitted."""
    prepare(cfg)
    datamodule = build_datamodule(cfg, cfg.paths.processed)
    module = build_module(cfg, datamodule)
    build_trainer(cfg, cfg.paths.cache / "resume", callbacks).trainer.fit(module, datamodule=datamodule)
    return module, datamodule


def hf_module(tmp_path: Path, model: Path, *overrides: str) -> TextClassifier:
    cfg = hf_config(tmp_path, model, "model.max_len=32", *overrides)
    resolved = to_dict(cfg)
    return TextClassifier(
        model=resolved["model"],
        optimizer=resolved["optimizer"],
        scheduler=resolved["scheduler"],
        vocab_size=100,
        num_classes=3,
    )


def group_of(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, dict]:
    """{parameter name: its param group} (each trainable parameter in exactly one)."""
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    found: dict[str, dict] = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert names[id(parameter)] not in found
            found[names[id(parameter)]] = group
    assert set(found) == {name for name, p in module.named_parameters() if p.requires_grad}
    return found


def test_biases_and_norms_get_no_weight_decay_and_lower_layers_smaller_steps(tmp_path: Path, tiny_bert: Path) -> None:
    from textclf.models.schedules import linear_warmup

    module = hf_module(
        tmp_path, tiny_bert, "model.layer_lr_decay=0.5", "optimizer.lr=0.001", "optimizer.weight_decay=0.01"
    )
    optimizer = build_optimizer(build("optimizer", module.hparams.optimizer), module.backbone)
    groups = group_of(optimizer, module.backbone)
    lr = {name: group["lr"] for name, group in groups.items()}
    decay = {name: group["weight_decay"] for name, group in groups.items()}
    layer = "encoder.encoder.layer.{}.attention.self.query.weight"
    # The head at optimizer.lr, then halving down the 2 layers to the embeddings.
    assert lr["classifier.weight"] == lr["classifier.bias"] == pytest.approx(1e-3)
    assert lr[layer.format(1)] == pytest.approx(5e-4)
    assert lr[layer.format(0)] == pytest.approx(2.5e-4)
    assert lr["encoder.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-4)
    assert lr["encoder.embeddings.LayerNorm.weight"] == pytest.approx(1.25e-4)
    no_decay = {name for name, value in decay.items() if value == 0}
    assert no_decay == {name for name in groups if name.endswith(".bias") or ".LayerNorm." in name}
    assert {"encoder.embeddings.LayerNorm.weight", "encoder.encoder.layer.1.output.LayerNorm.weight"} <= no_decay
    assert decay[layer.format(0)] == decay["classifier.weight"] == 0.01

    # The schedule scales every group's own base lr: after 1 of 10 steps with 5 warming up, 2/5 of it.
    scheduler = linear_warmup(optimizer, total_steps=10, warmup_fraction=0.5)
    optimizer.step()
    scheduler.step()
    after = {name: group["lr"] for name, group in group_of(optimizer, module.backbone).items()}
    assert after == pytest.approx({name: value * 2 / 5 for name, value in lr.items()})


def test_without_layer_lr_decay_one_lr_and_norm_classes_found_by_name(tmp_path: Path, tiny_bert: Path) -> None:
    """An RMSNorm of transformers' own (LlamaRMSNorm) is a norm too, found by its class name."""
    from textclf.models.hf import HuggingFaceClassifier

    llama = {
        "model_type": "llama",
        "vocab_size": 50,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    settings = hf_config(tmp_path, tiny_bert, "model.max_len=32").model
    backbone = build("model", {**settings, "architecture": llama}, vocab_size=50, num_classes=3)
    assert isinstance(backbone, HuggingFaceClassifier)
    optimizer = build_optimizer(lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1), backbone)
    groups = group_of(optimizer, backbone)
    assert {group["lr"] for group in groups.values()} == {0.01}
    no_decay = {name for name, group in groups.items() if group["weight_decay"] == 0}
    norms = {name for name in groups if "norm" in name}  # input_layernorm, post_attention_layernorm, the final norm
    assert len(norms) == 5 and no_decay == norms | {"classifier.bias"}

    decayed = build("model", {**settings, "architecture": llama, "layer_lr_decay": 0.5}, vocab_size=50, num_classes=3)
    lr = {name: group["lr"] for name, group in group_of(grouped(decayed), decayed).items()}
    assert lr["encoder.layers.1.mlp.up_proj.weight"] == pytest.approx(0.005)
    assert lr["encoder.embed_tokens.weight"] == pytest.approx(0.00125)
    assert lr["encoder.norm.weight"] == pytest.approx(0.005)  # above the layers: the top layer's


def grouped(backbone: torch.nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(lambda params: torch.optim.AdamW(params, lr=0.01), backbone)


def test_layer_lr_decay_for_a_model_without_numbered_layers_is_one_line(tmp_path: Path, tiny_bert: Path) -> None:
    albert = {  # ALBERT shares one layer's weights across its depth: albert_layer_groups.0.albert_layers.0
        "model_type": "albert",
        "vocab_size": 50,
        "embedding_size": 8,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    }
    settings = {**hf_config(tmp_path, tiny_bert, "model.max_len=32").model, "architecture": albert}
    assert build("model", settings, vocab_size=50, num_classes=3) is not None  # no decay: no layers needed
    with pytest.raises(TextclfError, match=r"model.layer_lr_decay=0.8: cannot find the layers of") as error:
        build("model", {**settings, "layer_lr_decay": 0.8}, vocab_size=50, num_classes=3)
    assert "\n" not in str(error.value) and "set model.layer_lr_decay=1" in str(error.value)


@pytest.mark.parametrize("model", ["fasttext", "lstm", "transformer"])
def test_from_scratch_models_keep_one_group_of_all_their_parameters(tmp_path: Path, model: str) -> None:
    """Their optimizer is what it was before the hf groups: the module's parameters, in order."""
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    resolved = to_dict(validate(compose([f"model={model}", "model.sparse=false", *paths], root=REPO_ROOT)))
    module = TextClassifier(
        model=resolved["model"],
        optimizer=resolved["optimizer"],
        scheduler=resolved["scheduler"],
        vocab_size=50,
        num_classes=3,
    )
    optimizer = build_optimizer(build("optimizer", resolved["optimizer"]), module.backbone)
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["params"] == list(module.parameters())
    assert "lr_scale" not in optimizer.param_groups[0]


def test_gradient_checkpointing_is_on_and_gives_the_same_gradients(tmp_path: Path, tiny_bert: Path) -> None:
    plain = hf_module(tmp_path, tiny_bert).backbone
    checkpointed = hf_module(tmp_path, tiny_bert, "model.gradient_checkpointing=true").backbone
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.encoder.is_activation_checkpointing and not plain.encoder.is_activation_checkpointing
    lengths = torch.tensor([12, 30, 5])
    batch = {"tokens": torch.randint(5, 100, (int(lengths.sum()),)), "lengths": lengths}

    def gradients(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
        backbone.train()  # with dropout: the recomputed forward must draw the same masks
        torch.manual_seed(1)
        backbone(batch).logsumexp(dim=1).sum().backward()
        return {name: p.grad for name, p in backbone.named_parameters() if p.grad is not None}

    expected, got = gradients(plain), gradients(checkpointed)
    assert set(got) == set(expected) and len(got) > 20
    for name, gradient in expected.items():
        assert torch.allclose(got[name], gradient, atol=1e-6), name


def test_lora_is_validated_before_any_work(tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for override, problem in [
        ("model.lora.r=0", "model.lora.r: input should be greater than 0 (got 0)"),
        ("model.lora.alpha=-1", "model.lora.alpha: input should be greater than 0 (got -1)"),
        ("model.lora.rank=8", "model.lora.rank: extra inputs are not permitted (got 8)"),
    ]:
        with pytest.raises(TextclfError) as error:
            hf_config(tmp_path, tiny_bert, override.replace("model.lora.rank", "+model.lora.rank"))
        assert str(error.value) == f"invalid config: {problem}"
    with pytest.raises(TextclfError, match=r"model.lora.r=8 trains adapters inside the encoder"):
        hf_config(tmp_path, tiny_bert, "model.lora.r=8", "model.freeze_encoder=true")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed: importing it fails
    with pytest.raises(TextclfError) as error:
        hf_config(tmp_path, tiny_bert, "model.lora.r=8")
    assert str(error.value) == 'invalid config: model.lora.r=8 needs peft: pip install "textclf[lora]"'
    hf_config(tmp_path, tiny_bert)  # off (r null), no peft needed


def test_lora_for_a_model_peft_has_no_default_for_is_one_line(tmp_path: Path, tiny_bert: Path) -> None:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    albert = {"model_type": "albert", "vocab_size": 50, "embedding_size": 8, "hidden_size": 16}
    albert |= {"intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    assert "albert" not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    settings = {**hf_config(tmp_path, tiny_bert, "model.max_len=32", "model.lora.r=2").model, "architecture": albert}
    with pytest.raises(TextclfError, match=r"model.lora.target_modules: peft has no default modules for 'albert'"):
        build("model", settings, vocab_size=50, num_classes=3)
    named = {**settings, "lora": {**settings["lora"], "target_modules": ["query", "value"]}}
    assert sum(p.requires_grad for p in build("model", named, vocab_size=50, num_classes=3).parameters()) == 6


def test_a_lora_fine_tune_trains_adapters_and_head_and_ships(
    tmp_path: Path, tiny_bert: Path, hf_home: Path, mlflow_uri: str
) -> None:
    from textclf.pipeline import run_pipeline

    train = write_table(tmp_path / "train.csv", texts(per_class=16))
    test_pairs = texts(per_class=4, seed=7)
    cfg = hf_config(
        tmp_path,
        tiny_bert,
        "data=table",
        f"data.train={train}",
        f"data.test={write_table(tmp_path / 'test.csv', test_pairs)}",
        "model.max_len=32",
        "model.lora.r=4",
        "scheduler=none",
        "optimizer.lr=0.01",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        "train.resume_interval_s=null",
    )
    summary = run_pipeline(cfg, tmp_path / "job")

    checkpoint = tmp_path / "job" / "models" / "model.ckpt"
    module = load_checkpoint(checkpoint)  # the hyperparameters rebuild the adapters
    assert module.hparams.model["lora"] == {"r": 4, "alpha": 16, "dropout": 0.1, "target_modules": None}
    trainable = {name for name, p in module.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or name.startswith("classifier.") for name in trainable)
    assert {name for name in trainable if name.startswith("classifier.")} == {"classifier.weight", "classifier.bias"}
    count = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert count * 20 < sum(p.numel() for p in module.parameters())
    lora_b = [p for name, p in module.backbone.named_parameters() if ".lora_B." in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # they start at zero: trained
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    query = "backbone.encoder.base_model.model.encoder.layer.0.attention.self.query.base_layer.weight"
    pretrained = load_file(tiny_bert / "model.safetensors")["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(saved[query], pretrained)  # trained from the pretrained weights, left as they were

    processed = next((tmp_path / "cache" / "processed").iterdir())
    datamodule = TextDataModule(processed, batch_size=8, eval_batch_size=8, max_len=32)
    temperature = json.loads((tmp_path / "job" / "reports" / "metrics.json").read_text())["temperature"]
    expected = calibrated(predict(module, datamodule)[0], temperature)  # evaluate's probabilities, in test order
    with mlflow_tracking_uri(mlflow_uri):
        served = mlflow.pyfunc.load_model(f"runs:/{summary['run_id']}/model")
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{summary['run_id']}/model", dst_path=str(tmp_path)))
    frame = served.predict(pd.DataFrame({"text": [text for _, text in test_pairs]}))
    labels = json.loads((processed / "labels.json").read_text())
    assert frame[labels].to_numpy() == pytest.approx(expected.double().numpy(), abs=1e-5)
    assert any(line.startswith("peft==") for line in (local / "requirements.txt").read_text().split())


class OptimizerSteps(Callback):
    """Counts the training batches and records the lr of each optimizer step and after the last."""

    def __init__(self) -> None:
        self.batches, self.step_lrs, self.final_lrs = 0, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches += 1

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:  # noqa: ANN001
        self.step_lrs.append([group["lr"] for group in optimizer.param_groups])

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        self.final_lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]


def test_accumulated_batches_make_half_the_optimizer_steps_the_schedule_spans(tmp_path: Path, tiny_bert: Path) -> None:
    cfg = tiny_training(
        tmp_path,
        tiny_bert,
        "trainer.accumulate_grad_batches=2",
        "trainer.max_epochs=2",
        "scheduler=linear_warmup",
        "scheduler.warmup_fraction=0",
        "model.layer_lr_decay=0.5",
    )
    steps = OptimizerSteps()
    module, _ = fit(cfg, [steps])
    assert steps.batches == 8  # 2 epochs of 4 batches
    assert module.trainer.global_step == len(steps.step_lrs) == module.trainer.estimated_stepping_batches == 4
    # The linear decay reaches zero exactly after the last step: its total_steps is those 4 steps.
    assert all(lr > 0 for lr in steps.step_lrs[-1]) and steps.final_lrs == [0.0] * len(steps.final_lrs)


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path: Path, tiny_bert: Path) -> None:
    """Lightning's bf16-mixed on the CPU: the forward pass under torch.autocast (bf16 logits),
    the weights kept in float32."""
    cfg = tiny_training(tmp_path, tiny_bert, "trainer.precision=bf16-mixed")

    class Recorder(Callback):
        def on_train_start(self, trainer, module) -> None:  # noqa: ANN001
            self.start = module.backbone.classifier.weight.detach().clone()
            self.dtypes = set()
            module.backbone.classifier.register_forward_hook(lambda _, __, out: self.dtypes.add(out.dtype))

    recorder = Recorder()
    module, _ = fit(cfg, [recorder])
    weight = module.backbone.classifier.weight
    assert recorder.dtypes == {torch.bfloat16}
    assert weight.dtype == torch.float32 and torch.isfinite(weight).all() and not torch.equal(weight, recorder.start)
