"""A pretrained Hugging Face encoder (AutoModel) with a linear head, fine-tuned or frozen.

The ids come from the model's own tokenizer (textclf.encoders.hf, chosen with the model by
``model=hf``), already cut with their special tokens: a document is one window of at most
``max_len`` tokens, or (encoder.truncation=chunks) up to ``max_chunks`` windows one after the
other, each but the last exactly ``max_len`` long, so ``max_len`` alone cuts it back into
them. The batch's W windows are padded to (W, L) with the model's padding id, masked by their
lengths and encoded in one pass; each is pooled and a document's pooled windows averaged (B, H)
before the dropout and the head: one prediction per document.

With a frozen encoder that vector is a fixed function of the document: the train stage
computes it once per split (textclf.models.embeddings) and the batches carry it as
``features``, which ``forward`` takes in place of the tokens.

A checkpoint reloads without the model's files (the shipped model carries only the checkpoint
and the tokenizer): the encoder is always built from a configuration (AutoModel.from_config),
and the configuration the model was trained with is recorded as plain JSON data in the model's
settings (``architecture``, see ``checkpoint_settings``), so a checkpoint's hyperparameters
rebuild it; the weights are the checkpoint's. Only training reads the pretrained weights, from
``name``, once the module is set up to fit (``load_pretrained``, called by
TextClassifier.setup): building the model, on PyTorch's meta device too (train's memory
check), reads nothing but config.json.

Training (``optimizer_groups``, used by textclf.models.optim): no weight decay on biases and
normalization weights, and with ``layer_lr_decay`` d < 1 smaller steps lower down (Clark et al.
2020, ELECTRA; Sun et al. 2019): the head takes the optimizer's lr, and of L layers (0 the
bottom one, as the parameters are named) layer i lr*d^(L-i), so the top one lr*d, and the
embeddings lr*d^(L+1). ``gradient_checkpointing``
recomputes each layer's activations in the backward pass rather than keeping them. ``lora``
trains low-rank adapters (peft) inside the frozen encoder, and the head.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from torch import nn

from textclf.config import Fraction, PositiveFloat, PositiveInt
from textclf.errors import TextclfError
from textclf.models.sequence import pad_batch, pool
from textclf.pretrained import (
    architecture as architecture_of,
)
from textclf.pretrained import (
    check_max_len,
    config_from_architecture,
    load_config,
    load_weights,
)

# A parameter of encoder layer i: ...layer.<i>. (BERT, RoBERTa, DistilBERT, ELECTRA, DeBERTa),
# ...layers.<i>. (ModernBERT, Llama); of the embeddings: ...embeddings. (the BERT kin), ...embed_tokens.
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens)\.")
# Normalization layers by class name, as transformers' Trainer finds them (its
# ALL_LAYERNORM_LAYERS and get_decay_parameter_names): models define their own (BertLayerNorm, T5LayerNorm, LlamaRMSNorm).
_NORM_SUFFIXES = ("LayerNorm", "RMSNorm")


class LoraSettings(BaseModel):
    """model.lora: LoRA adapters (Hu et al. 2021) on the encoder, through peft; r null: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: PositiveInt | None  # the adapters' rank; null: no adapters (the whole encoder trains)
    alpha: PositiveFloat  # their update is scaled by alpha / r
    dropout: Fraction  # on the adapters' input
    target_modules: list[str] | str | None  # module names (or "all-linear"); null: peft's default for the model


class HuggingFaceClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        name: str,
        max_len: PositiveInt,
        max_chunks: PositiveInt,
        pooling: Literal["cls", "mean"],
        dropout: Fraction,
        freeze_encoder: bool,
        gradient_checkpointing: bool,
        layer_lr_decay: Annotated[float, Field(gt=0, le=1)],
        lora: LoraSettings,
        cache_embeddings: bool,
        # The model's configuration as recorded in a checkpoint (plain JSON data); null (the
        # config's value): read config.json from ``name``.
        architecture: dict[str, JsonValue] | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        config = load_config(name) if architecture is None else config_from_architecture(architecture)
        check_max_len(name, max_len, config)
        if vocab_size > config.vocab_size:
            raise TextclfError(
                f"model.name={name!r}: the encoder's {vocab_size} token ids do not fit the model's "
                f"{config.vocab_size} embeddings (preprocess with the model's own tokenizer: encoder=hf)"
            )
        self.name = name
        self.max_len = max_len  # tokens per window (one window per document but with chunks)
        self.max_chunks = max_chunks  # windows per document at most (data.datamodule.tokens_kept)
        self.pooling = pooling
        self.freeze_encoder = freeze_encoder
        self.cache_embeddings = cache_embeddings
        self.architecture = architecture_of(config)
        self.pretrained = architecture is None  # weights to read from ``name`` before training
        self.pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
        self.encoder = AutoModel.from_config(config, dtype=torch.float32, trust_remote_code=False)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # BERT's pooler: unused (the head pools), so DDP finds no idle weights
        if gradient_checkpointing:
            self._checkpoint_activations()
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()  # from the start: Lightning never calls train(), and restores the modes it found
        self.lora = LoraSettings.model_validate(lora)
        if self.lora.r is not None:
            self.encoder = self._with_adapters(self.encoder)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, num_classes)
        self.layer_lr_decay = layer_lr_decay
        if layer_lr_decay != 1:
            self._encoder_layers()  # fails now, not once training starts, where the layers are not found

    def _checkpoint_activations(self) -> None:
        """The encoder recomputes its layers' activations in the backward pass (non-reentrant
        torch.utils.checkpoint, which also works with frozen inputs and LoRA)."""
        try:
            self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        except ValueError as error:  # transformers: "<Model> does not support activation checkpointing."
            raise TextclfError(
                f"model.gradient_checkpointing=true: {self.name!r} ({type(self.encoder).__name__}) does not "
                "support it; set model.gradient_checkpointing=false"
            ) from error

    def _with_adapters(self, encoder: nn.Module) -> nn.Module:
        """``encoder`` wrapped by peft with LoRA adapters (the base weights frozen, the
        adapters trained; B starts at zero, so the wrapped encoder computes what it did)."""
        from peft import LoraConfig, get_peft_model
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        model_type = encoder.config.model_type
        if self.lora.target_modules is None and model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise TextclfError(
                f"model.lora.target_modules: peft has no default modules for {model_type!r} models ({self.name!r}); "
                "name them, e.g. -S 'model.lora.target_modules=[query,value]' (or all-linear)"
            )
        config = LoraConfig(
            r=self.lora.r,
            lora_alpha=self.lora.alpha,
            lora_dropout=self.lora.dropout,
            target_modules=self.lora.target_modules,
        )
        with warnings.catch_warnings():  # peft asks transformers 5 by a name it deprecates (is_gradient_checkpointing)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return get_peft_model(encoder, config)

    def _base_encoder(self) -> nn.Module:
        """The transformers model itself (inside peft's wrapper, with LoRA)."""
        return self.encoder.get_base_model() if self.lora.r is not None else self.encoder

    def _encoder_layers(self) -> dict[str, int]:
        """{name of an encoder parameter: its layer, 0 (the bottom) to L - 1} for the parameters
        in a layer; raises when none is (a model laid out otherwise)."""
        layers = {}
        for name, _ in self.encoder.named_parameters():
            match = _LAYER.search(name)
            if match is not None:
                layers[name] = int(match.group(1))
        if not layers:
            raise TextclfError(
                f"model.layer_lr_decay={self.layer_lr_decay}: cannot find the layers of {self.name!r} "
                "(no parameters named ...layer.<i>. or ...layers.<i>.); set model.layer_lr_decay=1"
            )
        return layers

    def _lr_scales(self) -> dict[str, float]:
        """{parameter name: its lr over the optimizer's}: d^(L-i) in layer i of L, d^(L+1) in the
        embeddings, d (the top layer's) in the encoder's other parameters (a final norm); the
        head's, absent, 1."""
        decay = self.layer_lr_decay
        if decay == 1:
            return {}
        layers = self._encoder_layers()
        count = max(layers.values()) + 1
        scales = {}
        for name, _ in self.encoder.named_parameters():
            if name in layers:
                exponent = count - layers[name]
            elif _EMBEDDINGS.search(name) is not None:
                exponent = count + 1
            else:
                exponent = 1
            scales[f"encoder.{name}"] = decay**exponent
        return scales

    def _no_decay(self) -> set[str]:
        """Names of the parameters weight decay leaves alone: biases and normalization weights."""
        names = set()
        for module_name, module in self.named_modules():
            is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(_NORM_SUFFIXES)
            for name, _ in module.named_parameters(recurse=False):
                if is_norm or name == "bias":
                    names.add(f"{module_name}.{name}" if module_name else name)
        return names

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters in groups of one weight decay and one lr scale, in the
        order of ``named_parameters`` (textclf.models.optim.build_optimizer): biases and
        normalization weights get weight_decay 0, the others the optimizer's."""
        scales, no_decay = self._lr_scales(), self._no_decay()
        groups: dict[tuple[bool, float], dict[str, Any]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            decays, scale = name not in no_decay, scales.get(name, 1.0)
            if (decays, scale) not in groups:
                groups[decays, scale] = {"params": [], "lr_scale": scale, **({} if decays else {"weight_decay": 0.0})}
            groups[decays, scale]["params"].append(parameter)
        return list(groups.values())

    def checkpoint_settings(self) -> dict[str, Any]:
        """Settings recorded with the model's in its checkpoint (TextClassifier): what rebuilds
        it without the files of ``name``."""
        return {"architecture": self.architecture}

    def load_pretrained(self) -> None:
        """Copies the pretrained weights of ``name`` into the encoder (nothing for a model
        rebuilt from a checkpoint, whose weights are its own)."""
        if not self.pretrained:
            return
        source = load_weights(self.name).state_dict()
        encoder = self._base_encoder()
        # With LoRA, peft renames each adapted module's weights (query.weight -> query.base_layer.weight)
        # and adds the adapters' own (lora_A, lora_B: not pretrained).
        renamed = {key.replace(".base_layer.", "."): key for key in encoder.state_dict() if ".base_layer." in key}
        source = {renamed.get(key, key): value for key, value in source.items()}
        missing, _ = encoder.load_state_dict(source, strict=False)  # extra: the pooler's weights
        missing = [key for key in missing if ".lora_" not in key]
        if missing:
            raise TextclfError(f"model.name={self.name!r}: its weights lack {len(missing)} tensors ({missing[0]}, ...)")

    def train(self, mode: bool = True) -> HuggingFaceClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen, it is a fixed feature extractor: no dropout either
        return self

    @property
    def fixed_embeddings(self) -> bool:
        """Whether ``embed`` is worth computing once per training (model.cache_embeddings): the
        encoder is frozen and none of its parameters trains (an adapter inside it would)."""
        return (
            self.cache_embeddings
            and self.freeze_encoder
            and not any(parameter.requires_grad for parameter in self.encoder.parameters())
        )

    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: tokens (T,) flat ids with their special tokens, lengths (B,) tokens per
        document (offsets (B,) unused) -> (B, H) the document vectors the head reads: each
        window's state pooled (cls or mean), a document's windows averaged."""
        tokens, lengths = batch["tokens"], batch["lengths"]
        windows = split_windows(lengths, self.max_len)
        ids = pad_batch(tokens, windows.lengths, pad_id=self.pad_id)  # (W, L), L <= max_len
        real = torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < windows.lengths.unsqueeze(1)  # (W, L)
        real[:, 0] = True  # an empty document (the tokenizer always adds some) still attends to one position
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            hidden = self.encoder(input_ids=ids, attention_mask=real.long()).last_hidden_state  # (W, L, H)
        pooled = hidden[:, 0] if self.pooling == "cls" else pool(hidden, real, "mean")  # (W, H)
        # Each window in its document's row, at its place there (B, C, H), zeros elsewhere:
        # summed over C and divided by the count, the mean of the document's windows; a
        # document of one window is its window's vector, bit for bit. (An index_put, not an
        # index_add: deterministic on a GPU too.)
        most = int(windows.count.max()) if lengths.numel() else 1
        slots = pooled.new_zeros(lengths.numel(), most, pooled.size(1))  # (B, C, H)
        slots[windows.document, windows.position] = pooled
        return slots.sum(dim=1) / windows.count.unsqueeze(1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch: as ``embed`` takes, or ``features`` (B, H), embed's output computed before
        (a frozen encoder's, see textclf.models.embeddings) -> logits (B, num_classes)"""
        features = batch.get("features")
        return self.classifier(self.dropout(self.embed(batch) if features is None else features))


class Windows(NamedTuple):
    """The windows of a batch of documents, each (W,): ``lengths`` tokens per window,
    ``document`` the index of its document, ``position`` its place there; ``count`` (B,)
    windows per document."""

    lengths: torch.Tensor
    document: torch.Tensor
    position: torch.Tensor
    count: torch.Tensor


def split_windows(lengths: torch.Tensor, window: int) -> Windows:
    """lengths (B,) tokens per document, each stored as consecutive windows of ``window``
    tokens, the last one shorter -> its Windows. A document has ceil(length / window) windows,
    an empty one a single empty window; the windows of the flat tokens (T,) follow one another
    in this order."""
    count = torch.div(lengths + window - 1, window, rounding_mode="floor").clamp(min=1)  # (B,)
    document = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), count)  # (W,)
    first = torch.cumsum(count, dim=0) - count  # (B,) the index of each document's first window
    position = torch.arange(document.numel(), device=lengths.device) - first[document]  # (W,)
    window_lengths = (lengths[document] - position * window).clamp(max=window)  # (W,)
    return Windows(window_lengths, document, position, count)
