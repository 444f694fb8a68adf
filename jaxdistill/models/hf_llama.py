"""Hugging Face Llama-family checkpoints (config.json + safetensors) as `Llama` params.

HF's q/k projections are already in the rotate-half RoPE layout that `llama.rope` uses, so
weights only need transposing ([out, in] -> [in, out]) and splitting into heads.
"""

from __future__ import annotations

import flax
import jax
import numpy as np

from jaxdistill.errors import DistillError
from jaxdistill.models.llama import Llama

MODEL_TYPES = ("llama", "mistral")  # Mistral without a sliding window is a Llama

# HF config fields that shape each kind of tensor, named when a tensor's shape disagrees.
_SHAPED_BY = {
    "embed_tokens": ("vocab_size", "hidden_size"), "lm_head": ("vocab_size", "hidden_size"),
    "q_proj": ("num_attention_heads", "head_dim", "hidden_size"),
    "o_proj": ("num_attention_heads", "head_dim", "hidden_size"),
    "k_proj": ("num_key_value_heads", "head_dim", "hidden_size"),
    "v_proj": ("num_key_value_heads", "head_dim", "hidden_size"),
    "gate_proj": ("intermediate_size", "hidden_size"),
    "up_proj": ("intermediate_size", "hidden_size"),
    "down_proj": ("intermediate_size", "hidden_size"), "norm": ("hidden_size",),
}


def _rope_theta(hf: dict) -> float:
    """RoPE base from either config style: `rope_parameters` (transformers 5) or `rope_theta`."""
    for field in ("rope_parameters", "rope_scaling"):
        rope = hf.get(field) or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise DistillError(f"config.json has {field}={rope!r}, a scaled RoPE this importer"
                               " does not support; only rope_type 'default' is implemented"
                               " (llama.rope)")
    parameters = hf.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", hf.get("rope_theta", 10000.0)))


def llama_config(hf: dict) -> dict:
    """`Llama` fields from a Hugging Face config.json, refusing what `Llama` does not compute."""
    unsupported = [f"{key}={hf.get(key)!r} (supported: {want!r})" for key, want in
                   (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False),
                    ("sliding_window", None)) if hf.get(key, want) != want]
    if unsupported:
        raise DistillError("config.json describes a model this Llama importer does not support: "
                           + ", ".join(unsupported))
    heads = hf["num_attention_heads"]
    return {
        "vocab_size": hf["vocab_size"], "num_layers": hf["num_hidden_layers"],
        "width": hf["hidden_size"], "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "mlp_dim": hf["intermediate_size"], "max_length": hf["max_position_embeddings"],
        "rope_theta": _rope_theta(hf), "norm_eps": hf["rms_norm_eps"],
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "dropout": float(hf.get("attention_dropout", 0.0)), "dtype": "float32",
    }


def _hf_names(num_layers: int, tied: bool) -> dict[tuple[str, ...], str]:
    """Flax parameter path -> Hugging Face tensor name."""
    names = {("embed", "embedding"): "model.embed_tokens.weight",
             ("final_norm", "scale"): "model.norm.weight"}
    if not tied:
        names[("head", "embedding")] = "lm_head.weight"
    for i in range(num_layers):
        hf, ours = f"model.layers.{i}.", f"layer_{i}"
        names[(ours, "attention_norm", "scale")] = f"{hf}input_layernorm.weight"
        names[(ours, "mlp_norm", "scale")] = f"{hf}post_attention_layernorm.weight"
        for proj, hf_proj in (("query", "q"), ("key", "k"), ("value", "v"), ("output", "o")):
            names[(ours, "attention", proj, "kernel")] = f"{hf}self_attn.{hf_proj}_proj.weight"
        for proj in ("gate", "up", "down"):
            names[(ours, "mlp", proj, "kernel")] = f"{hf}mlp.{proj}_proj.weight"
    return names


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape HF stores for our parameter of `shape`: torch Linear keeps [out, in].

    Our attention output kernel is [heads, head_dim, width] (two input axes); every other
    kernel [in, ...out] has one input axis; embeddings and norm scales match HF's."""
    if path[-1] != "kernel":
        return shape
    inputs = 2 if path[-2] == "output" else 1
    return int(np.prod(shape[inputs:])), int(np.prod(shape[:inputs]))


def _shape_error(name: str, have: tuple[int, ...], want: tuple[int, ...],
                 hf: dict) -> DistillError:
    kind = next(k for k in _SHAPED_BY if f"{k}.weight" in name)
    fields = ", ".join(f"{f}={hf.get(f)}" for f in _SHAPED_BY[kind])
    return DistillError(f"tensor {name} has shape {have} but config.json ({fields}) implies"
                        f" {want}; correct those fields in config.json to match the weights")


def convert(tensors: dict[str, np.ndarray], module: Llama, hf: dict) -> dict:
    """The Flax params of `module` from a Hugging Face Llama state dict (numpy, float32)."""
    abstract = flax.traverse_util.flatten_dict(jax.eval_shape(
        lambda: flax.linen.unbox(module.init(jax.random.key(0), np.zeros((1, 1), np.int32),
                                             train=False))["params"]))
    names = _hf_names(module.num_layers, module.tie_embeddings)
    missing = sorted(names[p] for p in abstract if names[p] not in tensors)
    if missing:
        raise DistillError(f"the checkpoint lacks {len(missing)} tensors config.json implies,"
                           f" e.g. {missing[:3]}; check num_hidden_layers"
                           f" ({hf.get('num_hidden_layers')}) and tie_word_embeddings"
                           f" ({hf.get('tie_word_embeddings')})")
    ignorable = {n for n in tensors if n.endswith("rotary_emb.inv_freq")}  # old checkpoints
    if module.tie_embeddings:
        ignorable.add("lm_head.weight")  # a tied checkpoint may still carry the copy
    unused = sorted(set(tensors) - set(names.values()) - ignorable)
    if unused:
        raise DistillError(f"config.json does not account for {len(unused)} tensors of the"
                           f" checkpoint, e.g. {unused[:3]}; check num_hidden_layers"
                           f" ({hf.get('num_hidden_layers')})")
    flat = {}
    for path, leaf in abstract.items():
        tensor = np.asarray(tensors[names[path]], np.float32)
        want = _hf_shape(path, leaf.shape)
        if tensor.shape != want:
            raise _shape_error(names[path], tensor.shape, want, hf)
        flat[path] = tensor.T.reshape(leaf.shape) if path[-1] == "kernel" else tensor
    return flax.traverse_util.unflatten_dict(flat)
