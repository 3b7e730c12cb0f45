"""textclf's OmegaConf resolvers, registered wherever Hydra composes conf/.

Hydra imports every module of the ``hydra_plugins`` namespace package when it looks for
plugins, in our processes and in DVC's (``dvc exp run -S`` composes params.yaml itself), so
registering here makes the resolvers exist in both. Kept tiny: nothing here imports textclf.

  ${textclf.local_inputs:${data}}  the local files and folders a data source reads (its
      path, train, validation and test keys that name an existing path, URLs and Hub ids
      left out), padded with LOCAL_INPUTS_PADDING to LOCAL_INPUTS slots: dvc.yaml lists
      ``${paths.inputs[i]}`` as the download stage's deps, so DVC reruns it when one changes.
  ${textclf.local_model:${model}}  the pretrained model's local directory (model.name, when
      it names one: model=hf) or LOCAL_MODEL_PADDING: dvc.yaml lists ``${paths.model_files}``
      as a dep of preprocess (its tokenizer) and train (its weights), so DVC reruns them when
      the model's files change; a Hub id is pinned by the param itself.
  ${textclf.stem:${.path}}  a name for a corpus from its location: the last part of a path
      or URL without its archive or table extension ("corpus.tar.gz" -> "corpus").
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from omegaconf import OmegaConf

LOCAL_INPUTS = 3
# A file every download stage already depends on (dvc.yaml), so an unused slot changes nothing.
LOCAL_INPUTS_PADDING = "src/textclf/data/sources/base.py"
INPUT_KEYS = ("path", "train", "validation", "test")
# A file preprocess and train already depend on (dvc.yaml): the dep when no local model is named.
LOCAL_MODEL_PADDING = "src/textclf/pretrained.py"
EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip", ".csv", ".tsv", ".jsonl", ".json", ".parquet")


def local_inputs(data):  # noqa: ANN001, ANN201 - an OmegaConf node in, a ListConfig out
    found = []
    for key in INPUT_KEYS:
        value = data.get(key) if hasattr(data, "get") else None
        if not isinstance(value, str) or not value or urlparse(value).scheme.lower() in ("http", "https", "file"):
            continue
        path = os.path.expanduser(value)
        if os.path.exists(path) and path not in found:
            found.append(path)
    found = found[:LOCAL_INPUTS]
    return OmegaConf.create(found + [LOCAL_INPUTS_PADDING] * (LOCAL_INPUTS - len(found)))


def local_model(model):  # noqa: ANN001, ANN201 - an OmegaConf node in, a str out
    if not hasattr(model, "get") or OmegaConf.is_missing(model, "name"):
        return LOCAL_MODEL_PADDING
    name = model.get("name")
    path = os.path.expanduser(name) if isinstance(name, str) and name else ""
    return path if path and os.path.isdir(path) else LOCAL_MODEL_PADDING


def stem(location) -> str:  # noqa: ANN001
    text = str(location or "").rstrip("/")
    name = text.rsplit("/", 1)[-1] or "corpus"
    for extension in EXTENSIONS:
        if name.lower().endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)]
    return name


OmegaConf.register_new_resolver("textclf.local_inputs", local_inputs, replace=True)
OmegaConf.register_new_resolver("textclf.local_model", local_model, replace=True)
OmegaConf.register_new_resolver("textclf.stem", stem, replace=True)
