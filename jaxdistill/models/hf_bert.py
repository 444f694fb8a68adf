"""A Hugging Face BERT (config.json, sentence-transformers' pooling files and a state dict) as
`jaxdistill.models.Bert` settings and Flax params."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import numpy as np

from jaxdistill.errors import DistillError
from jaxdistill.models.bert import Bert

# Where a converted tensor goes: (its param path, the float32 array) -> what the params hold.
Put = Callable[[tuple[str, ...], np.ndarray], Any]


def keep_on_host(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    return array


def read_json(path: str) -> Any:
    """A checkpoint's JSON file; a missing one is a one-line error naming it."""
    if not os.path.exists(path):
        raise DistillError(f"{path} is missing; a Hugging Face directory needs the files"
                           " save_pretrained writes (config.json, weights, tokenizer)")
    with open(path) as f:
        return json.load(f)


def bert_config(path: str) -> dict:
    """`Bert` fields from a Hugging Face config.json (plus sentence-transformers' pooling files)."""
    hf = read_json(os.path.join(path, "config.json"))
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
        mean = read_json(pooling_path).get("pooling_mode_mean_tokens")
        config["pooling"] = "mean" if mean else "cls"
    modules_path = os.path.join(path, "modules.json")
    if os.path.exists(modules_path):
        config["normalize"] = any(m["type"].endswith("Normalize") for m in read_json(modules_path))
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


def convert(tensors: Mapping[str, np.ndarray], module: Bert, put: Put = keep_on_host) -> dict:
    """The Flax params of `module` from a Hugging Face BERT state dict (with or without
    `bert.`), each passed through `put(path, array)` once converted (see `hf_llama.convert`)."""
    stored = {name.removeprefix("bert."): name for name in tensors}  # read lazily below
    abstract = flax.traverse_util.flatten_dict(jax.eval_shape(
        lambda: flax.linen.unbox(module.init(jax.random.key(0), np.zeros((1, 1), np.int32),
                                             np.ones((1, 1), np.int32), train=False))["params"]))
    names = _hf_names(module.num_layers)
    missing = sorted(names[p] for p in abstract if names.get(p) not in stored)
    if missing:
        raise DistillError(f"the checkpoint lacks {len(missing)} tensors the config implies,"
                           f" e.g. {missing[:3]}; does config.json match model.safetensors?")
    flat = {}
    for path, leaf in abstract.items():
        tensor = tensors[stored[names[path]]]
        value = _to_flax(np.asarray(tensor, np.float32), path, leaf.shape)
        if value.shape != leaf.shape:
            raise DistillError(
                f"tensor {names[path]} has shape {tensor.shape}, but config.json"
                f" implies {leaf.shape} for {'/'.join(path)}; the config does not match the"
                " weights")
        flat[path] = put(path, value)
    return flax.traverse_util.unflatten_dict(flat)


def _to_hf(value: np.ndarray, path: tuple[str, ...], hidden_size: int) -> np.ndarray:
    """`_to_flax` undone: a kernel's input axes (the attention output's heads × head_dim, else
    its first) flattened, then transposed to torch's [out, in]; a bias flattened."""
    if path[-1] == "kernel":
        inputs = hidden_size if path[-2] == "attention_output" else value.shape[0]
        return value.reshape(inputs, -1).T
    return value.reshape(-1) if path[-1] == "bias" else value


def to_hf(params: dict, model_config: dict, dtype: str = "float32"
          ) -> tuple[dict, Iterator[tuple[str, np.ndarray]]]:
    """The config.json of a Hugging Face `BertModel` computing the encoder `model_config`
    describes (a `Bert`'s fields), and its tensors one at a time in `dtype`: the inverse of
    `bert_config` and `convert`. The distillation projection, a training head, is left out."""
    fields = {f: v for f, v in model_config.items() if f != "model"}
    module = Bert(**fields)
    hf = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "position_embedding_type": "absolute", "vocab_size": module.vocab_size,
        "hidden_size": module.hidden_size, "num_hidden_layers": module.num_layers,
        "num_attention_heads": module.num_heads, "intermediate_size": module.mlp_dim,
        "max_position_embeddings": module.max_position,
        "type_vocab_size": module.type_vocab_size, "hidden_dropout_prob": module.dropout,
        "attention_probs_dropout_prob": module.dropout, "layer_norm_eps": module.layer_norm_eps,
        "initializer_range": 0.02, "pad_token_id": 0, "dtype": dtype,
    }
    names = _hf_names(module.num_layers)
    flat = flax.traverse_util.flatten_dict(params.get("params", params))

    def tensors():
        for path, value in flat.items():
            if path in names:
                yield names[path], _to_hf(np.asarray(value, np.float32), path,
                                          module.hidden_size).astype(dtype)

    return hf, tensors()


def sentence_transformers_files(model_config: dict, max_seq_length: int) -> dict[str, dict]:
    """sentence-transformers' module files (relative path -> JSON) for the encoder's pooling and
    normalisation, with the sequence length the embeddings were trained at."""
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if model_config.get("normalize", True):
        kinds.append(("2_Normalize", "Normalize"))
    modules = [{"idx": i, "name": str(i), "path": path,
                "type": f"sentence_transformers.models.{kind}"}
               for i, (path, kind) in enumerate(kinds)]
    mean = model_config.get("pooling", "mean") == "mean"
    return {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": model_config.get("hidden_size", Bert.hidden_size),
            "pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},
    }
