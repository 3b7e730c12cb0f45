"""The peer: the same fine-tuning with transformers.Trainer, in a fresh process; prints one JSON line.

    python -m benchmarks.hf_trainer --params P.yaml --output DIR [--device cpu|gpu]

What a user of Hugging Face would write instead of textclf: AutoModelForSequenceClassification
from the same ``model.name``, trained by Trainer on the very token ids textclf's preprocess wrote
(``<paths.processed>/{train,val,test}.pt``, already cut to ``model.max_len`` with their special
tokens), with textclf's batch sizes, epochs, AdamW (learning rate, weight decay; Trainer, too,
spares biases and LayerNorm weights from it) and linear warm-up over ``scheduler.warmup_fraction``
of the steps, then linear decay. Like textclf's train stage it scores the validation split after
every epoch; it saves no checkpoint (``save_strategy="no"``: the peer's cheapest setting). Batches
are padded to their longest document (DataCollatorWithPadding), as Trainer does by default.

``seconds`` is timed from after the imports (as ``benchmarks.train_one stage`` times textclf's
train stage) to the end of ``Trainer.train``; the test split is scored after, untimed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.train_one import peak_rss_mb
from textclf.config import load_params
from textclf.data.encoded import EncodedSplit, read_labels


def as_dataset(split: EncodedSplit):
    from datasets import Dataset

    ids = [split.tokens[split.offsets[i] : split.offsets[i + 1]].tolist() for i in range(len(split))]
    return Dataset.from_dict({"input_ids": ids, "labels": split.labels.tolist()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="Trainer's output_dir (nothing saved there)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = load_params(args.params)
    started = time.perf_counter()
    processed = cfg.paths.processed
    splits = {name: EncodedSplit.load(processed / f"{name}.pt") for name in ("train", "val", "test")}
    datasets = {name: as_dataset(split) for name, split in splits.items()}
    labels = read_labels(processed)
    name = cfg.model["name"]
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=len(labels))
    tokenizer = AutoTokenizer.from_pretrained(name)
    epochs = cfg.trainer.max_epochs
    steps = epochs * math.ceil(len(datasets["train"]) / cfg.train.batch_size)
    arguments = TrainingArguments(
        output_dir=str(args.output),
        per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.train.eval_batch_size,
        num_train_epochs=epochs,
        learning_rate=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.model_dump()["weight_decay"],
        lr_scheduler_type="linear",
        warmup_steps=int(steps * cfg.scheduler["warmup_fraction"]),
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=cfg.trainer.log_every_n_steps,
        report_to="none",
        seed=cfg.seed,
        use_cpu=args.device == "cpu",
        bf16=args.device == "gpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=datasets["train"],
        eval_dataset=datasets["val"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    trainer.train()
    seconds = time.perf_counter() - started

    from sklearn.metrics import accuracy_score, f1_score

    test = trainer.predict(datasets["test"])
    predicted = np.argmax(test.predictions, axis=1)
    result = {
        "seconds": seconds,
        "epochs": epochs,
        "steps": trainer.state.global_step,
        "samples_per_second": len(datasets["train"]) * epochs / seconds,
        "val_accuracy": next(e["eval_accuracy"] for e in reversed(trainer.state.log_history) if "eval_accuracy" in e),
        "test_accuracy": accuracy_score(test.label_ids, predicted),
        "test_f1_macro": f1_score(test.label_ids, predicted, average="macro"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
