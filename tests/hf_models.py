"""A tiny pretrained model of the Hugging Face kind, built by the tests (no network, no download),
and the config that fine-tunes it (model=hf) on a tiny corpus.

``build_tiny_bert`` writes what save_pretrained writes for a real model: config.json,
model.safetensors and the tokenizer files (a WordPiece tokenizer trained on the tiny corpus);
a random BERT of 2 layers, 32 wide, MAX_POSITIONS positions unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from textclf.config import Config, validate
from textclf.data.encoded import EncodedSplit
from textclf.params import compose
from textclf.stages.download import download
from textclf.stages.preprocess import preprocess

from conftest import REPO_ROOT
from corpora import texts

MAX_POSITIONS = 64


def build_tiny_bert(directory: Path, max_positions: int = MAX_POSITIONS) -> Path:
    """A directory as save_pretrained writes one: config.json, model.safetensors, tokenizer files."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=special)
    tokenizer.train_from_iterator([text for _, text in texts(per_class=20)], trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    with torch.random.fork_rng():  # the same weights every time, the caller's generator untouched
        torch.manual_seed(0)
        BertModel(config).save_pretrained(directory)
    return directory


def hf_config(tmp_path: Path, model: Path | str, *overrides: str) -> Config:
    paths = [f"paths.{name}={tmp_path / name}" for name in ("raw", "processed", "models", "reports", "cache")]
    return validate(compose(["model=hf", f"model.name={model}", *overrides, *paths], root=REPO_ROOT))


def prepare(cfg: Config) -> dict:
    download(cfg, cfg.paths.raw, progress=False)
    return preprocess(cfg, cfg.paths.raw, cfg.paths.processed, parallel=False)


def stored_documents(processed: Path) -> set[tuple[int, ...]]:
    documents = set()
    for name in ("train", "val", "test"):
        split = EncodedSplit.load(processed / f"{name}.pt")
        documents |= {tuple(split.tokens[split.offsets[i] : split.offsets[i + 1]].tolist()) for i in range(len(split))}
    return documents
