"""Offline teacher targets, the reading side: the top-k next-token log-probabilities that
`jaxdistill cache-teacher` (`jaxdistill.cache_teacher`) wrote for every row of a split, joined to
the data rows by index.

Files: SPLIT.top_log_probs.npy (float32 [rows, length, k]), SPLIT.top_indices.npy (int32) and
cache.json, which records what the cache was made from so a mismatched config is refused.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from jaxdistill.data import files
from jaxdistill.errors import DistillError

# What the cached rows depend on: another value makes other rows, which the targets do not match.
DATA_KEYS = ("name", "tokenizer", "format", "max_length", "prompt_length",
             "continuation_length")
FIELDS = ("top_log_probs", "top_indices")


def data_fingerprint(data_config: ml_collections.ConfigDict) -> dict:
    """The settings the rows depend on; for data from files, their settings instead of the
    dataset's name (a TFDS dataset's fingerprint is as before files were read)."""
    found = {key: data_config.get(key) for key in DATA_KEYS}
    if files.used(data_config):
        found.update(files.settings(data_config), name="",
                     too_long=data_config.get("too_long", "truncate"))
    return found


def read_metadata(directory: str) -> dict:
    path = os.path.join(directory, "cache.json")
    if not os.path.exists(path):
        raise DistillError(f"no teacher cache at {directory} (cache.json is missing): write one"
                           " with `jaxdistill cache-teacher --out DIR ...`")
    with open(path) as f:
        return json.load(f)


def metadata(data_config: ml_collections.ConfigDict) -> dict:
    """The cache's record, after checking it was made from this dataset layout."""
    recorded = read_metadata(data_config.teacher_cache)
    expected = data_fingerprint(data_config)
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
        for field in FIELDS}
    return lambda indices: {key: np.asarray(array[np.asarray(indices)])
                            for key, array in arrays.items()}
