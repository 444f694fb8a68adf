"""`jaxdistill cache-teacher`: the teacher's top-k next-token log-probabilities, computed once.

    jaxdistill cache-teacher --config configs/gkd_docs.py:local --out runs/teacher_top32 \\
        --top_k 32 --config.teacher.checkpoint=runs/lm_teacher
    jaxdistill train --config configs/gkd_docs.py:local --workdir runs/cached \\
        --config.method=cached_kd --config.data.teacher_cache=runs/teacher_top32

For every row of a split (in the data pipeline's own row order, so training reads them by the
same indices as the text) the cache holds, at each position of the row's real text, the
teacher's k most likely next tokens and their log-probabilities at config.loss.temperature,
normalised over the whole vocabulary so the remaining mass is known exactly. Training then
never runs the teacher: `cached_kd` compares the student with these targets through
`losses.sparse_divergence`; `jaxdistill.data.teacher_targets` reads them (and says which files
a cache holds).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from jaxdistill import data, loading, losses
from jaxdistill.data import teacher_targets
from jaxdistill.errors import DistillError
from jaxdistill.methods import lm


def _settings(config: ml_collections.ConfigDict, top_k: int, vocab_size: int) -> dict:
    """What every split of one cache must share."""
    return {"top_k": top_k, "temperature": config.loss.temperature, "vocab_size": vocab_size,
            "teacher": config.teacher.pretrained or config.teacher.checkpoint,
            "data": teacher_targets.data_fingerprint(config.data)}


def _existing(out: str, settings: dict) -> dict:
    """The cache.json already in `out` (a split is being added), checked against `settings`."""
    if not os.path.exists(os.path.join(out, "cache.json")):
        return {**settings, "splits": {}}
    recorded = teacher_targets.read_metadata(out)
    differing = sorted(key for key in settings if recorded.get(key) != settings[key])
    if differing:
        raise DistillError(f"the teacher cache at {out} was made with other {', '.join(differing)};"
                           " write this split into a new directory")
    return recorded


def write(config: ml_collections.ConfigDict, out: str, top_k: int, split: str = "train",
          batch_size: int = 256) -> dict:
    """Runs the teacher over every row of `split` and writes its top-k targets under `out`."""
    loaded = loading.teacher(config, data.spec(config.data).example_inputs())
    teacher, params = loaded.module, loaded.params
    vocab_size = teacher.vocab_size
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
                shape=(num_rows, *value.shape[1:]))
                for field, value in zip(teacher_targets.FIELDS, values)]
        for file, value in zip(files, values):
            file[start:start + batch_size] = value[:num_rows - start]
    for file in files:
        file.flush()
    recorded["splits"][split] = num_rows
    with open(os.path.join(out, "cache.json"), "w") as f:
        json.dump(recorded, f, indent=2)
    return recorded


