"""Batches: preprocessed examples read by index, the seeded endless training stream (each
process reading only its rows of every global batch, restartable at any step) and padded,
masked evaluation batches."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxdistill.data import info, lm_formats, sources, teacher_targets, text
from jaxdistill.errors import DistillError


def _preprocessor(data_config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
    """Decoded examples (stacked) -> model-ready arrays, for images or sentences."""

    def images(batch: dict) -> dict:
        return {"image": np.asarray(batch["image"], np.float32) / 255.0,
                "label": np.asarray(batch["label"], np.int32)}

    def sentences(batch: dict) -> dict:
        texts = [sources.as_text(t) for t in batch["text"]]
        encoded = text.tokenizer(data_config, data_config.max_length).encode_batch(texts)
        return {"input_ids": np.asarray([e.ids for e in encoded], np.int32),
                "attention_mask": np.asarray([e.attention_mask for e in encoded], np.int32)}

    def samples(batch: dict) -> dict:
        if "point" in batch:
            return {"x": np.asarray(batch["point"], np.float32)}
        # Images in [-1, 1], where σ_data = 0.5 (EDM's setting) describes them.
        return {"x": np.asarray(batch["image"], np.float32) / 127.5 - 1.0,
                "label": np.asarray(batch["label"], np.int32)}

    if sources.generative(data_config):
        return samples
    return images if text.text_format(data_config) is None else sentences


def _stack(examples: list[dict]) -> dict:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def _gather(arrays: dict[str, np.ndarray]) -> Callable[[Any], dict]:
    return lambda indices: {key: value[np.asarray(indices)] for key, value in arrays.items()}


def reader(data_config: ml_collections.ConfigDict, split: str):
    """(number of examples, read) where `read(indices)` returns the preprocessed batch.

    With `data.cache` the split is decoded once into memory (as tf.data's `cache()` would) and
    batches are gathered by one vectorised index; otherwise each batch is read and decoded from
    the array_record files. Language-model rows are always held in memory (see `text.lm_rows`).
    """
    if text.text_format(data_config) in lm_formats.FORMATS:
        num_rows = info.num_examples(data_config, split)
        read = _gather(text.lm_rows(data_config, split))
        return num_rows, _with_teacher_targets(data_config, split, num_rows, read)
    records = sources.source(data_config, split)
    preprocess = _preprocessor(data_config)
    if data_config.cache:
        return len(records), _gather(preprocess(_stack(records.__getitems__(range(len(records))))))
    return len(records), lambda indices: preprocess(_stack(records.__getitems__(list(indices))))


def _with_teacher_targets(data_config, split: str, num_rows: int, read):
    """`read`, joined row by row with the offline teacher targets when the run names a cache."""
    if not data_config.get("teacher_cache"):
        return read
    targets = teacher_targets.rows(data_config, split, num_rows)
    return read if targets is None else (lambda indices: {**read(indices), **targets(indices)})


def _local_batch_size(global_batch_size: int) -> int:
    if global_batch_size % jax.process_count():
        raise DistillError(f"batch size {global_batch_size} must be divisible by the"
                           f" {jax.process_count()} processes")
    return global_batch_size // jax.process_count()


class EpochShuffle:
    """Maps positions of an endless stream to example indices: one seeded permutation per epoch.

    Vectorised over a batch of positions, so shuffling costs nothing per example.
    """

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed = num_examples, seed

    @functools.lru_cache(maxsize=2)  # noqa: B019  (two epochs of one live shuffle, by design)
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.num_examples)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            selected = epochs == epoch
            indices[selected] = self.permutation(int(epoch))[offsets[selected]]
        return indices


def train_iterator(
    data_config: ml_collections.ConfigDict, global_batch_size: int, seed: int,
    start_batch: int = 0,
) -> grain.DatasetIterator:
    """This process's rows of an endless, seeded stream of global batches, from `start_batch`.

    Global batch k is positions [k·B, (k+1)·B) of the shuffled stream whatever the process count;
    process p reads only rows [p·L, (p+1)·L) of it (L = B / processes), so layouts with different
    process counts see the same examples in the same row order. Step k trains on batch k - 1, so
    a resumed run starts at its checkpoint's step and checkpoints need no per-process data state.
    """
    local = _local_batch_size(global_batch_size)
    rows = jax.process_index() * local + np.arange(local)
    num_examples, read = reader(data_config, data_config.train_split)
    shuffle = EpochShuffle(num_examples, seed)
    batches = grain.MapDataset.range(start_batch, sys.maxsize // global_batch_size).map(
        lambda k: read(shuffle(k * global_batch_size + rows)))
    return batches.to_iter_dataset().__iter__()


def eval_batches(
    data_config: ml_collections.ConfigDict, split: str, global_batch_size: int
) -> Iterator[dict]:
    """The whole split (this process's rows of it) in batches padded to one size, with a `mask`
    and each row's `index` in the split (what seeds per-example randomness, e.g. sampling)."""
    local = _local_batch_size(global_batch_size)
    offset = jax.process_index() * local
    num_examples, read = reader(data_config, split)
    for start in range(0, num_examples, global_batch_size):
        rows = np.arange(start + offset, start + offset + local)
        mask = rows < num_examples
        batch = read(np.where(mask, rows, 0))  # padding rows repeat example 0, masked out
        yield {**batch, "mask": mask, "index": rows.astype(np.int32)}
