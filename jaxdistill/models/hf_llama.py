"""Hugging Face Llama-family checkpoints (config.json + safetensors) as `Llama` params, and back.

    fields = llama_config(hf_config)               # `Llama` fields from a config.json dict
    params = convert(tensors, Llama(**fields), hf_config)
    hf_config, tensors = to_hf(params, fields)    # config.json dict, (name, array) one by one

Families: Llama (2, 3.x with "llama3" or "linear" RoPE scaling), Mistral (sliding window),
Qwen2/2.5 (q/k/v biases), Qwen3 (q/k norms), Gemma 2 and Gemma 3 text, each read as its
transformers code reads its config. HF's q/k projections are already in the rotate-half RoPE
layout that `llama.rope` uses, so weights only need transposing ([out, in] -> [in, out]) and
splitting into heads.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import DistillError
from jaxdistill.models.hf_bert import Put, keep_on_host
from jaxdistill.models.llama import COMPUTE_FIELDS, FULL, ROPE_TYPES, SLIDING, Llama

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
MODEL_TYPES = tuple(ARCHITECTURES)
_GEMMAS = ("gemma2", "gemma3_text")
# The config defaults of transformers' classes that the fields below fall back on.
_DEFAULT_HEAD_DIM = {"qwen3": 128, "gemma2": 256, "gemma3_text": 256}
_DEFAULT_THETA = {"gemma3_text": 1_000_000.0}
_DEFAULT_LOCAL_THETA = 10_000.0
_DEFAULT_PATTERN = {"gemma2": 2, "gemma3_text": 6}  # every n-th layer is full, the rest slide
_DEFAULT_WINDOW = 4096
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}  # HF name -> Llama's
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Llama)
             if f.name not in ("parent", "name")}

# HF config fields that shape each kind of tensor, named when a tensor's shape disagrees; the
# layer norms not listed are hidden_size wide.
_SHAPED_BY = {
    "embed_tokens": ("vocab_size", "hidden_size"), "lm_head": ("vocab_size", "hidden_size"),
    "q_proj": ("num_attention_heads", "head_dim", "hidden_size"),
    "o_proj": ("num_attention_heads", "head_dim", "hidden_size"),
    "k_proj": ("num_key_value_heads", "head_dim", "hidden_size"),
    "v_proj": ("num_key_value_heads", "head_dim", "hidden_size"),
    "q_norm": ("head_dim",), "k_norm": ("head_dim",),
    "gate_proj": ("intermediate_size", "hidden_size"),
    "up_proj": ("intermediate_size", "hidden_size"),
    "down_proj": ("intermediate_size", "hidden_size"),
}
# Our names inside a layer -> HF's; `post_norms` models (Gemma) call the MLP's norm
# pre_feedforward_layernorm and use post_attention_layernorm for the attention output's.
_LAYER_NAMES = {
    "attention_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
    "attention_post_norm": "post_attention_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
    "query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
    "output": "self_attn.o_proj", "query_norm": "self_attn.q_norm",
    "key_norm": "self_attn.k_norm", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_TOP_NAMES = {"embed": "model.embed_tokens", "head": "lm_head", "final_norm": "model.norm"}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def llama_config(hf: dict) -> dict:
    """All `Llama` fields from a Hugging Face config.json, refusing what `Llama` does not
    compute."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise DistillError(f"config.json has model_type={model_type!r}, which this importer"
                           f" does not read; supported: {', '.join(MODEL_TYPES)}")
    gemma = model_type in _GEMMAS
    activation = hf.get("hidden_activation" if gemma else "hidden_act", "silu")
    problems = [f"{key}={hf.get(key)!r} (supported: False)"
                for key in ("mlp_bias", "use_bidirectional_attention") if hf.get(key)]
    if activation not in _ACTIVATIONS:
        problems.append(f"{'hidden_activation' if gemma else 'hidden_act'}={activation!r}"
                        f" (supported: {', '.join(_ACTIVATIONS)})")
    if problems:
        raise DistillError("config.json describes a model this Llama importer does not support: "
                           + ", ".join(problems))
    heads = hf["num_attention_heads"]
    read = {
        "vocab_size": hf["vocab_size"], "num_layers": hf["num_hidden_layers"],
        "width": hf["hidden_size"], "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or _DEFAULT_HEAD_DIM.get(model_type,
                                                               hf["hidden_size"] // heads),
        "mlp_dim": hf["intermediate_size"], "max_length": hf["max_position_embeddings"],
        "norm_eps": hf["rms_norm_eps"],
        "tie_embeddings": bool(hf.get("tie_word_embeddings", gemma)),
        "dropout": float(hf.get("attention_dropout") or 0.0), "dtype": "float32",
        "mlp_activation": _ACTIVATIONS[activation],
        **_family_fields(hf, model_type), **_window_fields(hf, model_type),
        **_rope_fields(hf, model_type),
    }
    return {**_DEFAULTS, **read}


def _family_fields(hf: dict, model_type: str) -> dict:
    """Biases, norms and scalings, as each family's transformers code sets them."""
    bias = bool(hf.get("attention_bias", False))  # Llama, Qwen3, Gemma: all four projections
    fields = {"qkv_bias": bias, "output_bias": bias,
              "qk_norm": model_type in ("qwen3", "gemma3_text")}
    if model_type == "mistral":
        fields.update(qkv_bias=False, output_bias=False)
    elif model_type == "qwen2":
        fields.update(qkv_bias=True, output_bias=False)
    elif model_type in _GEMMAS:
        fields.update(norm_style="gemma", scale_embeddings=True, post_norms=True,
                      query_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5,
                      final_softcap=hf.get("final_logit_softcapping"),
                      # Gemma 3 has q/k norms instead; its transformers code ignores the field.
                      attn_softcap=(hf.get("attn_logit_softcapping")
                                    if model_type == "gemma2" else None))
    return fields


def _window_fields(hf: dict, model_type: str) -> dict:
    """`sliding_window` and `layer_types`: Mistral slides in every layer; Qwen only with
    use_sliding_window, in layers from max_window_layers on; Gemma every layer but each n-th,
    unless config.json lists its layer_types."""
    window = hf.get("sliding_window", _DEFAULT_WINDOW)
    if model_type == "llama" or (model_type in ("qwen2", "qwen3")
                                 and not hf.get("use_sliding_window", False)):
        return {"sliding_window": None, "layer_types": None}
    if model_type == "mistral":
        return {"sliding_window": window, "layer_types": None}
    layers = range(hf["num_hidden_layers"])
    if model_type in _GEMMAS:
        pattern = (hf.get("sliding_window_pattern", _DEFAULT_PATTERN[model_type])
                   if model_type == "gemma3_text" else _DEFAULT_PATTERN[model_type])
        default = [SLIDING if (i + 1) % pattern else FULL for i in layers]
    else:
        default = [SLIDING if i >= hf.get("max_window_layers", 28) else FULL for i in layers]
    return {"sliding_window": window, "layer_types": tuple(hf.get("layer_types") or default)}


def _rope_fields(hf: dict, model_type: str) -> dict:
    """RoPE settings from either config style: transformers 5's `rope_parameters` (keyed by
    layer type for Gemma 3) or the older `rope_scaling` beside `rope_theta` (and Gemma 3's
    `rope_local_base_freq`); `rope_scaling` wins where both are given, as in transformers."""
    parameters = hf.get("rope_parameters") or {}
    base = {"rope_theta": hf.get("rope_theta", _DEFAULT_THETA.get(model_type, 10_000.0)),
            "partial_rotary_factor": hf.get("partial_rotary_factor")}
    if model_type != "gemma3_text":
        return _scaled_rope({**base, **(hf.get("rope_scaling") or parameters)}, hf)
    full = {**base, **(parameters.get("full_attention") or {}), **(hf.get("rope_scaling") or {})}
    local = {"rope_theta": hf.get("rope_local_base_freq", _DEFAULT_LOCAL_THETA),
             **(parameters.get("sliding_attention") or {})}
    if _rope_type(local) != "default":
        raise DistillError(f"config.json scales the sliding layers' RoPE ({local!r}); only"
                           " the full-attention layers' RoPE may be scaled: set it to default")
    return {**_scaled_rope(full, hf), "rope_local_theta": float(local["rope_theta"])}


def _rope_type(rope: dict) -> str:
    return rope.get("rope_type", rope.get("type", "default"))


def _scaled_rope(rope: dict, hf: dict) -> dict:
    rope_type = _rope_type(rope)
    if rope_type not in ROPE_TYPES:
        raise DistillError(f"config.json asks for rope_type {rope_type!r}, which jaxdistill"
                           f" does not compute; supported: {', '.join(ROPE_TYPES)}")
    if (rope.get("partial_rotary_factor") or 1.0) != 1.0:
        raise DistillError(f"config.json rotates part of each head (partial_rotary_factor="
                           f"{rope['partial_rotary_factor']}); only 1.0 is supported")
    fields = {"rope_theta": float(rope["rope_theta"]), "rope_type": rope_type}
    if rope_type != "default":
        fields["rope_factor"] = float(rope["factor"])
    if rope_type == "llama3":
        fields.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_max_length=int(rope.get("original_max_position_embeddings")
                                                   or hf["max_position_embeddings"]))
    return fields


def _hf_name(path: tuple[str, ...], post_norms: bool) -> str:
    """The Hugging Face tensor name of our parameter at `path`."""
    *modules, leaf = path
    if modules[0].startswith("layer_"):
        ours = modules[1] if modules[1] in _LAYER_NAMES else modules[2]
        hf = ("pre_feedforward_layernorm" if post_norms and ours == "mlp_norm"
              else _LAYER_NAMES[ours])
        prefix = f"model.layers.{modules[0].removeprefix('layer_')}.{hf}"
    else:
        prefix = _TOP_NAMES[modules[0]]
    return f"{prefix}.{_LEAF_NAMES[leaf]}"


def _input_axes(path: tuple[str, ...]) -> int:
    """How many leading axes of our kernel are its inputs: the attention output's [heads,
    head_dim, width] has two, every other kernel [in, ...out] one."""
    return 2 if path[-2] == "output" else 1


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape HF stores for our parameter of `shape`: torch Linear keeps [out, in], biases
    are flat; embeddings and norm scales match HF's."""
    if path[-1] == "bias":
        return (int(np.prod(shape)),)
    if path[-1] != "kernel":
        return shape
    inputs = _input_axes(path)
    return int(np.prod(shape[inputs:])), int(np.prod(shape[:inputs]))


def _from_hf(path: tuple[str, ...], tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (tensor.T if path[-1] == "kernel" else tensor).reshape(shape)


def _to_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """C-contiguous: safetensors.numpy writes an array's memory as it lies, ignoring strides."""
    hf_shape = _hf_shape(path, value.shape)
    return np.ascontiguousarray(value.reshape(hf_shape[::-1]).T if path[-1] == "kernel"
                                else value.reshape(hf_shape))


def _shape_error(name: str, have: tuple[int, ...], want: tuple[int, ...],
                 hf: dict) -> DistillError:
    fields = ", ".join(f"{f}={hf.get(f)}"
                       for f in _SHAPED_BY.get(name.split(".")[-2], ("hidden_size",)))
    return DistillError(f"tensor {name} has shape {have} but config.json ({fields}) implies"
                        f" {want}; correct those fields in config.json to match the weights")


def _structure_fields(hf: dict) -> str:
    """The config.json fields that decide which tensors a checkpoint has, with their values."""
    return ", ".join(f"{f} ({hf[f]})" for f in
                     ("num_hidden_layers", "tie_word_embeddings", "attention_bias") if f in hf)


def convert(tensors: Mapping[str, np.ndarray], module: Llama, hf: dict,
            put: Put = keep_on_host) -> dict:
    """The Flax params of `module` from a Hugging Face state dict, float32 whatever the stored
    dtype. Tensors are read one at a time, so `tensors` may map names to memory maps, and each
    goes through `put(path, array)` as soon as it is converted (e.g. onto its devices)."""
    abstract = flax.traverse_util.flatten_dict(jax.eval_shape(
        lambda: flax.linen.unbox(module.init(jax.random.key(0), np.zeros((1, 1), np.int32),
                                             train=False))["params"]))
    names = {path: _hf_name(path, module.post_norms) for path in abstract}
    missing = sorted(n for n in names.values() if n not in tensors)
    if missing:
        raise DistillError(f"the checkpoint lacks {len(missing)} tensors config.json implies,"
                           f" e.g. {missing[:3]}; check {_structure_fields(hf)}")
    ignorable = {n for n in tensors if n.endswith("rotary_emb.inv_freq")}  # old checkpoints
    if module.tie_embeddings:
        ignorable.add("lm_head.weight")  # a tied checkpoint may still carry the copy
    unused = sorted(set(tensors) - set(names.values()) - ignorable)
    if unused:
        raise DistillError(f"config.json does not account for {len(unused)} tensors of the"
                           f" checkpoint, e.g. {unused[:3]}; check {_structure_fields(hf)}")
    flat = {}
    for path, leaf in abstract.items():
        tensor = tensors[names[path]]
        want = _hf_shape(path, leaf.shape)
        if tensor.shape != want:
            raise _shape_error(names[path], tensor.shape, want, hf)
        flat[path] = put(path, _from_hf(path, np.asarray(tensor, np.float32), leaf.shape))
    return flax.traverse_util.unflatten_dict(flat)


def to_hf(params: dict, model_config: dict, dtype: str = "float32"
          ) -> tuple[dict, Iterator[tuple[str, np.ndarray]]]:
    """The Hugging Face config.json dict of the model `model_config` describes (a `Llama`'s
    fields, as `llama_config` returns them), and a generator of its HF tensors (name, array
    in `dtype`), made one at a time from `params` (the model's params, or the variables dict
    holding them under "params"): the exact inverse of `llama_config` and `convert`.

    The family is the one whose transformers code computes this model; a model that none
    computes (e.g. q/k norms with Llama's norms and a query bias only) is refused."""
    fields = _resolved(model_config)
    hf = _hf_config(fields, _model_type(fields), dtype)
    theirs = _canonical(llama_config(hf))
    ours = _canonical(fields)
    differing = sorted(k for k, v in theirs.items() if ours[k] != v)
    if differing:
        raise DistillError(f"no Hugging Face family computes this model as {hf['model_type']}"
                           f" would ({', '.join(f'{k}={fields[k]!r}' for k in differing)});"
                           " change those fields to match one of " + ", ".join(MODEL_TYPES))
    params = params.get("params", params)
    return hf, _hf_tensors(params, fields["post_norms"], jnp.dtype(dtype))


def _hf_tensors(params: dict, post_norms: bool,
                dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
    for path, value in flax.traverse_util.flatten_dict(params).items():
        yield _hf_name(path, post_norms), _to_hf(path, np.asarray(value, np.float32)).astype(dtype)


def _resolved(model_config: dict) -> dict:
    """Every `Llama` field, with head_dim and the per-layer attention kinds spelled out."""
    fields = {**_DEFAULTS, **{k: v for k, v in model_config.items() if k != "model"}}
    module = Llama(**fields)
    return {**fields, "head_dim": module.resolved_head_dim,
            "layer_types": module.resolved_layer_types}


def _model_type(fields: dict) -> str:
    """The family whose distinguishing features `fields` has."""
    if fields["norm_style"] == "gemma":
        return "gemma3_text" if fields["qk_norm"] else "gemma2"
    if fields["qk_norm"]:
        return "qwen3"
    if fields["qkv_bias"] and not fields["output_bias"]:
        return "qwen2"
    return "mistral" if fields["sliding_window"] is not None else "llama"


_ROPE_SCALING = ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                 "rope_original_max_length")
_ROPE_UNREAD = {"default": _ROPE_SCALING, "linear": _ROPE_SCALING[1:], "llama3": ()}


def _canonical(fields: dict) -> dict:
    """`fields` as what they compute: settings no layer reads set to their defaults, the compute
    settings left out (they are no property of the weights)."""
    fields = _resolved(fields)
    slides = SLIDING in fields["layer_types"]
    return {
        **fields, **dict.fromkeys(COMPUTE_FIELDS),
        "vocab_size": fields["embedding_rows"] or fields["vocab_size"],
        "embedding_rows": None,
        "query_scale": fields["query_scale"] or fields["head_dim"] ** -0.5,
        "sliding_window": fields["sliding_window"] if slides else None,
        "rope_local_theta": fields["rope_local_theta"] if slides else None,
        "rope_original_max_length": fields["rope_original_max_length"] or fields["max_length"],
        **{k: _DEFAULTS[k] for k in _ROPE_UNREAD[fields["rope_type"]]},
    }


def _hf_config(fields: dict, model_type: str, dtype: str) -> dict:
    gemma = model_type in _GEMMAS
    hf = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": fields["embedding_rows"] or fields["vocab_size"],
        "hidden_size": fields["width"],
        "intermediate_size": fields["mlp_dim"], "num_hidden_layers": fields["num_layers"],
        "num_attention_heads": fields["num_heads"], "num_key_value_heads": fields["num_kv_heads"],
        "head_dim": fields["head_dim"],
        "max_position_embeddings": fields["max_length"], "rms_norm_eps": fields["norm_eps"],
        "tie_word_embeddings": fields["tie_embeddings"],
        "attention_dropout": fields["dropout"],
        "hidden_activation" if gemma else "hidden_act":
            {ours: theirs for theirs, ours in _ACTIVATIONS.items()}[fields["mlp_activation"]],
        "rope_parameters": _hf_rope(fields, model_type),
        # transformers 5 reads `dtype`, earlier versions `torch_dtype`.
        "dtype": dtype, "torch_dtype": dtype,
    }
    if model_type not in ("mistral", "qwen2"):
        hf["attention_bias"] = fields["output_bias"]
    if model_type != "llama":
        hf["sliding_window"] = fields["sliding_window"]
    if model_type not in ("llama", "mistral"):
        hf["layer_types"] = list(fields["layer_types"])
    if model_type in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = fields["sliding_window"] is not None
    if gemma:
        scale = fields["query_scale"]
        hf.update(query_pre_attn_scalar=round(scale ** -2) if scale else fields["head_dim"],
                  final_logit_softcapping=fields["final_softcap"],
                  attn_logit_softcapping=fields["attn_softcap"])
    return hf


def _hf_rope(fields: dict, model_type: str) -> dict:
    """transformers 5's rope_parameters: one dict, or one per layer type for Gemma 3."""
    rope = {"rope_type": fields["rope_type"], "rope_theta": fields["rope_theta"]}
    if fields["rope_type"] != "default":
        rope["factor"] = fields["rope_factor"]
    if fields["rope_type"] == "llama3":
        rope.update(low_freq_factor=fields["rope_low_freq_factor"],
                    high_freq_factor=fields["rope_high_freq_factor"],
                    original_max_position_embeddings=(fields["rope_original_max_length"]
                                                      or fields["max_length"]))
    if model_type != "gemma3_text":
        return rope
    local = fields["rope_local_theta"] or fields["rope_theta"]
    return {FULL: rope, SLIDING: {"rope_type": "default", "rope_theta": local}}
