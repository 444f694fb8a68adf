"""A trained student as a Hugging Face directory: `jaxdistill export WORKDIR --out DIR`.

A causal LM (`llama` in any of its families) becomes what `AutoModelForCausalLM.from_pretrained`
loads: config.json with its family's `architectures` and `model_type`, safetensors (sharded past
`max_shard_bytes`, with model.safetensors.index.json), generation_config.json and the tokenizer
files (with its chat template). A BERT encoder becomes a sentence-transformers directory (its
pooling, normalisation and the sequence length it was trained at) that `SentenceTransformer(DIR)`
loads.

Tensors are converted and written one shard at a time, so host memory holds the params and at
most one shard beside them, never a second copy of the model. The directory is written beside
DIR and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
from safetensors.numpy import save_file
from transformers import PreTrainedTokenizerFast

from jaxdistill import checkpoint, data, loading
from jaxdistill.data import text_tokenizers
from jaxdistill.errors import DistillError
from jaxdistill.models import hf_bert, hf_llama

DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_SHARD_BYTES = 2 * 2**30
CONVERTERS = {"llama": hf_llama.to_hf, "bert": hf_bert.to_hf}


def export(workdir: str, out: str, *, dtype: str = "float32",
           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> str:
    """Writes the student of the run in `workdir` (its newest checkpoint, its EMA when kept) as
    a Hugging Face directory `out`, with its data's tokenizer; returns `out`."""
    _check_out(out, dtype)
    run_config = checkpoint.read_config(workdir)
    model_config = run_config.student.to_dict()
    if model_config["model"] not in CONVERTERS:
        raise DistillError(f"the student of {workdir} is a {model_config['model']!r} model,"
                           " which has no Hugging Face counterpart; export works for"
                           f" {' and '.join(CONVERTERS)} students")
    return write(out, model_config, loading.run(workdir).params,
                 data.transformers_tokenizer(run_config.data), dtype=dtype,
                 max_shard_bytes=max_shard_bytes, max_seq_length=run_config.data.max_length)


def write(out: str, model_config: dict, params, tokenizer: PreTrainedTokenizerFast, *,
          dtype: str = "float32", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
          max_seq_length: int | None = None) -> str:
    """Writes a model (`model_config`'s fields and its params) and `tokenizer` as a Hugging Face
    directory `out`; an encoder gets sentence-transformers' files, embedding `max_seq_length`
    tokens."""
    _check_out(out, dtype)
    kind = model_config["model"]
    hf_config, tensors = CONVERTERS[kind](params, model_config, dtype)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        _write_shards(staging, tensors, max_shard_bytes)
        tokenizer.save_pretrained(staging)
        if kind == "llama":
            # In config.json too: without them transformers falls back to its class defaults.
            ids = _generation_config(text_tokenizers.special_ids(tokenizer))
            _write_json(staging, "generation_config.json", ids)
            _write_json(staging, "config.json", {**hf_config, **ids})
        else:
            _write_json(staging, "config.json", hf_config)
            files = hf_bert.sentence_transformers_files(
                model_config, max_seq_length or model_config["max_position"])
            for name, content in files.items():
                _write_json(staging, name, content)
        if os.path.exists(out):
            os.rmdir(out)  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_out(out: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise DistillError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if os.path.exists(out) and os.listdir(out):
        raise DistillError(f"{out} exists and is not empty; export into a new directory")


def _write_json(directory: str, name: str, content) -> None:
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


def _generation_config(ids) -> dict:
    eos = list(ids.eos_ids)
    return {"bos_token_id": ids.bos, "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": ids.pad}


def _write_shards(directory: str, tensors: Iterator[tuple[str, np.ndarray]],
                  max_shard_bytes: int) -> None:
    """model.safetensors, or shards of at most `max_shard_bytes` (a larger tensor alone) and
    their index, written as the tensors arrive."""
    shards, weight_map, total = [], {}, 0
    pending, pending_bytes = {}, 0

    def flush():
        nonlocal pending, pending_bytes
        shard = os.path.join(directory, f"shard-{len(shards):05d}.safetensors")
        save_file(pending, shard, metadata={"format": "pt"})
        shards.append((shard, list(pending)))
        pending, pending_bytes = {}, 0

    for name, tensor in tensors:
        if pending and pending_bytes + tensor.nbytes > max_shard_bytes:
            flush()
        pending[name] = np.ascontiguousarray(tensor)
        pending_bytes += tensor.nbytes
        total += tensor.nbytes
    if pending or not shards:
        flush()
    if len(shards) == 1:
        os.replace(shards[0][0], os.path.join(directory, "model.safetensors"))
        return
    for i, (shard, names) in enumerate(shards, 1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.replace(shard, os.path.join(directory, final))
        weight_map.update(dict.fromkeys(names, final))
    _write_json(directory, "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})
