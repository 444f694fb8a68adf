"""Offline teacher targets: the teacher's top-k next-token log-probabilities, computed once.

    jaxdistill cache-teacher --config configs/gkd_docs.py:local --out runs/teacher_top32 \\
        --top_k 32 --config.teacher.checkpoint=runs/lm_teacher
    jaxdistill train --config configs/gkd_docs.py:local --workdir runs/cached \\
        --config.method=cached_kd --config.data.teacher_cache=runs/teacher_top32

For every row of a split (in the data pipeline's own row order, so training reads them by the
same indices as the text) the cache holds, at each position of the row's real text, the
teacher's k most likely next tokens and their log-probabilities at config.loss.temperature,
normalised over the whole vocabulary so the remaining mass is known exactly. Training then
never runs the teacher: `cached_kd` compares the student with these targets through
`losses.sparse_divergence`. Files: SPLIT.top_log_probs.npy (float32 [rows, length, k]),
SPLIT.top_indices.npy (int32) and cache.json, which records what the cache was made from so a
mismatched config is refused.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from jaxdistill import checkpoint, data, losses, models
from jaxdistill.errors import DistillError

_DATA_KEYS = ("name", "tokenizer", "format", "max_length", "prompt_length",
              "continuation_length")
_FIELDS = ("top_log_probs", "top_indices")


def _data_fingerprint(data_config: ml_collections.ConfigDict) -> dict:
    return {key: data_config.get(key) for key in _DATA_KEYS}


def _teacher(config: ml_collections.ConfigDict):
    if config.teacher.pretrained:
        loaded = models.from_pretrained(config.teacher.pretrained)
        return loaded.module, {"params": loaded.params}
    if not config.teacher.checkpoint:
        raise DistillError("caching teacher targets needs config.teacher.checkpoint (a teacher"
                           " run's workdir) or config.teacher.pretrained")
    return checkpoint.load_model(config.teacher.checkpoint)


def _settings(config: ml_collections.ConfigDict, top_k: int, vocab_size: int) -> dict:
    """What every split of one cache must share."""
    return {"top_k": top_k, "temperature": config.loss.temperature, "vocab_size": vocab_size,
            "teacher": config.teacher.pretrained or config.teacher.checkpoint,
            "data": _data_fingerprint(config.data)}


def _existing(out: str, settings: dict) -> dict:
    """The cache.json already in `out` (a split is being added), checked against `settings`."""
    if not os.path.exists(os.path.join(out, "cache.json")):
        return {**settings, "splits": {}}
    recorded = _read_metadata(out)
    differing = sorted(key for key in settings if recorded.get(key) != settings[key])
    if differing:
        raise DistillError(f"the teacher cache at {out} was made with other {', '.join(differing)};"
                           " write this split into a new directory")
    return recorded


def write(config: ml_collections.ConfigDict, out: str, top_k: int, split: str = "train",
          batch_size: int = 256) -> dict:
    """Runs the teacher over every row of `split` and writes its top-k targets under `out`."""
    from jaxdistill.methods import lm

    teacher, params = _teacher(config)
    vocab_size = lm.llama.head_matrix(params).shape[-1]
    recorded = _existing(out, _settings(config, top_k, vocab_size))
    temperature = config.loss.temperature

    @jax.jit
    def targets(params, batch):
        logits = lm.logits(teacher, params, lm.real_text(batch), train=False)
        return losses.top_k_targets(logits, top_k, temperature=temperature)

    num_rows, read = data.reader(config.data, split)
    if not num_rows:
        raise DistillError(f"split {split!r} has no rows to cache")
    os.makedirs(out, exist_ok=True)
    files = None
    for start in range(0, num_rows, batch_size):
        # Every batch full-sized (the last one repeats row 0), so the teacher compiles once.
        indices = np.arange(start, start + batch_size)
        values = [np.asarray(x) for x in targets(params, read(np.where(indices < num_rows,
                                                                       indices, 0)))]
        if files is None:
            files = [np.lib.format.open_memmap(
                os.path.join(out, f"{split}.{field}.npy"), mode="w+", dtype=value.dtype,
                shape=(num_rows, *value.shape[1:])) for field, value in zip(_FIELDS, values)]
        for file, value in zip(files, values):
            file[start:start + batch_size] = value[:num_rows - start]
    for file in files:
        file.flush()
    recorded["splits"][split] = num_rows
    with open(os.path.join(out, "cache.json"), "w") as f:
        json.dump(recorded, f, indent=2)
    return recorded


def _read_metadata(directory: str) -> dict:
    path = os.path.join(directory, "cache.json")
    if not os.path.exists(path):
        raise DistillError(f"no teacher cache at {directory} (cache.json is missing): write one"
                           " with `jaxdistill cache-teacher --out DIR ...`")
    with open(path) as f:
        return json.load(f)


def metadata(data_config: ml_collections.ConfigDict) -> dict:
    """The cache's record, after checking it was made from this dataset layout."""
    recorded = _read_metadata(data_config.teacher_cache)
    expected = _data_fingerprint(data_config)
    if recorded["data"] != expected:
        made = recorded["data"]
        differing = sorted(key for key in expected if made.get(key) != expected[key])
        was = ", ".join(f"{key}={made.get(key)!r}" for key in differing)
        now = ", ".join(f"{key}={expected[key]!r}" for key in differing)
        raise DistillError(
            f"the teacher cache at {data_config.teacher_cache} was made for other data ({was};"
            f" this run has {now}); rebuild it with `jaxdistill cache-teacher` for this config")
    return recorded


def rows(data_config: ml_collections.ConfigDict, split: str, num_rows: int):
    """`read(indices) -> {"teacher_top_log_probs", "teacher_top_indices"}` for `split`, or None
    when the cache has no such split (evaluation splits need no teacher targets)."""
    recorded = metadata(data_config)
    if split not in recorded["splits"]:
        return None
    if recorded["splits"][split] != num_rows:
        raise DistillError(f"the teacher cache holds {recorded['splits'][split]} rows of {split}"
                           f" but the data has {num_rows}; rebuild it with `jaxdistill"
                           " cache-teacher`")
    arrays = {f"teacher_{field}": np.load(
        os.path.join(data_config.teacher_cache, f"{split}.{field}.npy"), mmap_mode="r")
        for field in _FIELDS}
    return lambda indices: {key: np.asarray(array[np.asarray(indices)])
                            for key, array in arrays.items()}
