"""Input pipelines: TFDS array_record sources read through grain.

Training batches come from a checkpointable grain iterator over global batch indices: a seeded
permutation per epoch, of which each process reads only its own rows of every global batch.
Evaluation reads a whole split in fixed-size batches, the last one padded and masked, so one
compiled eval step serves every batch.

Two kinds of dataset: images with class labels (`image`, `label`), and sentences (`text`),
tokenized here with `config.data.tokenizer` into `input_ids` and `attention_mask` of
`config.data.max_length` tokens. `DatasetSpec.inputs` names what the models take, in order.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.data import bundled_sentences, sklearn_digits  # noqa: F401 (TFDS builders)
from jaxdistill.errors import DistillError

tfds.display_progress_bar(False)

# Datasets that ship with the installed packages: prepared offline on first use.
BUNDLED = ("sklearn_digits", "bundled_sentences")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the models must agree with, read from the TFDS metadata before anything compiles."""

    task: str                                   # "classification" or "sentences"
    inputs: dict[str, tuple[tuple[int, ...], Any]]  # model input name -> (example shape, dtype)
    split_sizes: dict[str, int]
    num_classes: int | None = None
    vocab_size: int | None = None

    def example_inputs(self) -> tuple[np.ndarray, ...]:
        """One example of each model input, batched: what `module.init` is traced with."""
        return tuple(np.ones((1, *shape), dtype) for shape, dtype in self.inputs.values())


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The dataset's builder; the bundled digits are prepared on first use (offline, a second)."""
    try:
        builder = tfds.builder(data_config.name, data_dir=data_config.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DistillError(
            f"unknown dataset {data_config.name!r}; use {' or '.join(map(repr, BUNDLED))} offline"
            " or a TFDS name such as 'mnist'") from None
    if data_config.name in BUNDLED:
        builder.download_and_prepare(file_format="array_record")
    return builder


@functools.lru_cache(maxsize=4)
def tokenizer(name_or_path: str, max_length: int):
    """The pretrained model's tokenizer, truncating and padding to `max_length` tokens."""
    from jaxdistill.models import pretrained

    if not name_or_path:
        raise DistillError("a text dataset needs config.data.tokenizer: a pretrained model's name"
                           " or directory (its tokenizer.json)")
    loaded = pretrained.load_tokenizer(pretrained.resolve_path(name_or_path))
    pad = loaded.padding or {"pad_id": 0, "pad_token": "[PAD]"}
    loaded.enable_truncation(max_length)
    loaded.enable_padding(length=max_length, pad_id=pad["pad_id"], pad_token=pad["pad_token"])
    return loaded


def spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
    info = _builder(data_config).info
    split_sizes = {name: split.num_examples for name, split in info.splits.items()}
    if "text" in info.features:
        length = data_config.max_length
        return DatasetSpec(
            task="sentences", split_sizes=split_sizes,
            inputs={"input_ids": ((length,), np.int32), "attention_mask": ((length,), np.int32)},
            vocab_size=tokenizer(data_config.tokenizer, length).get_vocab_size())
    return DatasetSpec(
        task="classification", split_sizes=split_sizes,
        inputs={"image": (tuple(info.features["image"].shape), np.float32)},
        num_classes=info.features["label"].num_classes)


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Examples in `split`, which may be a TFDS slice such as 'train[:10%]'."""
    return _builder(data_config).info.splits[split].num_examples


def steps_per_epoch(data_config: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """Optimizer steps in one pass over the training split (fractional: epochs run across
    batches, see `train_iterator`)."""
    return num_examples(data_config, data_config.train_split) / global_batch_size


def source(data_config: ml_collections.ConfigDict, split: str):
    """A random-access array_record source for `split`, preparing the dataset if needed."""
    builder = _builder(data_config)
    try:
        return tfds.data_source(
            data_config.name, split=split, data_dir=data_config.data_dir or None,
            download=data_config.name in BUNDLED)
    except (AssertionError, FileNotFoundError) as e:
        raise DistillError(
            f"dataset {data_config.name!r} split {split!r} is not prepared under"
            f" {builder.data_dir}: prepare it with `tfds build {data_config.name}"
            f" --file_format=array_record` or set config.data.data_dir ({e})") from None


def _preprocessor(data_config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
    """Decoded examples (stacked) -> model-ready arrays, for either kind of dataset."""

    def images(batch: dict) -> dict:
        return {"image": np.asarray(batch["image"], np.float32) / 255.0,
                "label": np.asarray(batch["label"], np.int32)}

    def sentences(batch: dict) -> dict:
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in batch["text"]]
        encoded = tokenizer(data_config.tokenizer, data_config.max_length).encode_batch(texts)
        return {"input_ids": np.asarray([e.ids for e in encoded], np.int32),
                "attention_mask": np.asarray([e.attention_mask for e in encoded], np.int32)}

    return sentences if "text" in _builder(data_config).info.features else images


def _stack(examples: list[dict]) -> dict:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def reader(data_config: ml_collections.ConfigDict, split: str):
    """(number of examples, read) where `read(indices)` returns the preprocessed batch.

    With `data.cache` the split is decoded once into memory (as tf.data's `cache()` would) and
    batches are gathered by one vectorised index; otherwise each batch is read and decoded from
    the array_record files.
    """
    records = source(data_config, split)
    preprocess = _preprocessor(data_config)
    if data_config.cache:
        arrays = preprocess(_stack(records.__getitems__(range(len(records)))))
        return len(records), lambda indices: {k: v[np.asarray(indices)] for k, v in arrays.items()}
    return len(records), lambda indices: preprocess(_stack(records.__getitems__(list(indices))))


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

    @functools.lru_cache(maxsize=2)
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
    """The whole split (this process's rows of it) in batches padded to one size, with a `mask`."""
    local = _local_batch_size(global_batch_size)
    offset = jax.process_index() * local
    num_examples, read = reader(data_config, split)
    for start in range(0, num_examples, global_batch_size):
        rows = np.arange(start + offset, start + offset + local)
        mask = rows < num_examples
        batch = read(np.where(mask, rows, 0))  # padding rows repeat example 0, masked out
        yield {**batch, "mask": mask}
