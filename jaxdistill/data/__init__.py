"""Input pipelines: TFDS array_record sources read through grain.

Training batches come from a checkpointable grain iterator over global batch indices: a seeded
permutation per epoch, of which each process reads only its own rows of every global batch.
Evaluation reads a whole split in fixed-size batches, the last one padded and masked, so one
compiled eval step serves every batch.

Two kinds of dataset: images with class labels (`image`, `label`), and text (`text`), tokenized
with `config.data.tokenizer` (see `text_tokenizers`) in one of these `config.data.format`s:
- `sentences`: each example alone, as `input_ids` and `attention_mask` of `config.data.max_length`
  tokens (task "sentences", the default for sentence datasets);
- `packed` and `prompts`: documents as language-model rows (task "lm", see `lm_formats`; `packed`
  is the default for other text datasets). Rows are computed once per split and kept in memory.
`DatasetSpec.inputs` names what the models take, in order.
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

from jaxdistill.data import bundled_docs, bundled_sentences, sklearn_digits, toy_2d  # noqa: F401
from jaxdistill.data import lm_formats, text_tokenizers
from jaxdistill.errors import DistillError

tfds.display_progress_bar(False)

# Datasets that ship with the installed packages: prepared offline on first use.
BUNDLED = ("sklearn_digits", "bundled_sentences", "bundled_docs", "toy_2d")
# Text datasets whose examples are sentences to embed; other text datasets are LM corpora.
SENTENCE_DATASETS = ("bundled_sentences",)
TEXT_FORMATS = ("sentences", *lm_formats.FORMATS)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the models must agree with, read from the TFDS metadata before anything compiles."""

    task: str                                   # "classification", "sentences" or "lm"
    inputs: dict[str, tuple[tuple[int, ...], Any]]  # model input name -> (example shape, dtype)
    split_sizes: dict[str, int]                 # examples per split (for "lm": rows)
    num_classes: int | None = None
    vocab_size: int | None = None
    special_ids: text_tokenizers.SpecialIds | None = None  # "lm": <pad>, <bos>, <eos> ids

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
    if _bundled(data_config):
        builder.download_and_prepare(file_format="array_record")
    return builder


def _bundled(data_config: ml_collections.ConfigDict) -> bool:
    return data_config.name.split("/")[0] in BUNDLED


def generative(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the run models the data itself (task "generation": diffusion, flow and
    consistency models) rather than predicting labels or tokens."""
    return data_config.get("task", "") == "generation" or "point" in _builder(
        data_config).info.features


def text_format(data_config: ml_collections.ConfigDict) -> str | None:
    """How the dataset's text becomes model inputs (one of TEXT_FORMATS); None for images."""
    if "text" not in _builder(data_config).info.features:
        return None
    chosen = data_config.get("format", "") or (
        "sentences" if data_config.name in SENTENCE_DATASETS else "packed")
    if chosen not in TEXT_FORMATS:
        raise DistillError(f"unknown config.data.format {chosen!r}; choose one of"
                           f" {', '.join(TEXT_FORMATS)}")
    return chosen


def _token_settings(data_config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The settings a text dataset's tokens depend on: the key of the caches below."""
    return ml_collections.FrozenConfigDict(
        {key: data_config[key] for key in ("name", "data_dir", "tokenizer")})


def tokenizer(data_config: ml_collections.ConfigDict, max_length: int | None = None):
    """The text dataset's `tokenizers.Tokenizer` (see `text_tokenizers`); with `max_length` it
    truncates and pads every encoding to that many tokens."""
    return _tokenizer(_token_settings(data_config), max_length)


@functools.lru_cache(maxsize=4)
def _tokenizer(data_config: ml_collections.FrozenConfigDict, max_length: int | None):
    loaded = text_tokenizers.load(data_config.tokenizer, _builder(data_config).data_path,
                                  lambda: _texts(data_config, "train"))
    if max_length:
        pad = loaded.padding or {"pad_id": 0, "pad_token": "[PAD]"}
        loaded.enable_truncation(max_length)
        loaded.enable_padding(length=max_length, pad_id=pad["pad_id"], pad_token=pad["pad_token"])
    return loaded


def spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
    info = _builder(data_config).info
    split_sizes = {name: num_examples(data_config, name) for name in info.splits}
    if generative(data_config):
        return _generation_spec(info, split_sizes)
    text = text_format(data_config)
    if text == "sentences":
        length = data_config.max_length
        return DatasetSpec(
            task="sentences", split_sizes=split_sizes,
            inputs={"input_ids": ((length,), np.int32), "attention_mask": ((length,), np.int32)},
            vocab_size=tokenizer(data_config, length).get_vocab_size())
    if text in lm_formats.FORMATS:
        return DatasetSpec(
            task="lm", split_sizes=split_sizes,
            inputs={"input_ids": ((lm_formats.input_length(text, data_config),), np.int32)},
            vocab_size=tokenizer(data_config).get_vocab_size(),
            special_ids=text_tokenizers.special_ids(tokenizer(data_config)))
    return DatasetSpec(
        task="classification", split_sizes=split_sizes,
        inputs={"image": (tuple(info.features["image"].shape), np.float32)},
        num_classes=info.features["label"].num_classes)


def _generation_spec(info, split_sizes: dict[str, int]) -> DatasetSpec:
    """A denoiser's inputs: the noisy sample, its time, and the class where the data has one."""
    features = info.features
    sample = features["point"] if "point" in features else features["image"]
    inputs = {"x": (tuple(sample.shape), np.float32), "time": ((), np.float32)}
    num_classes = features["label"].num_classes if "label" in features else None
    if num_classes:
        inputs["label"] = ((), np.int32)
    return DatasetSpec(task="generation", inputs=inputs, split_sizes=split_sizes,
                       num_classes=num_classes)


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Examples in `split`, which may be a TFDS slice such as 'train[:10%]' (for language-model
    formats: rows)."""
    if text_format(data_config) in lm_formats.FORMATS:
        return len(next(iter(_lm_rows(data_config, split).values())))
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
            download=_bundled(data_config))
    except (AssertionError, FileNotFoundError) as e:
        raise DistillError(
            f"dataset {data_config.name!r} split {split!r} is not prepared under"
            f" {builder.data_dir}: prepare it with `tfds build {data_config.name}"
            f" --file_format=array_record` or set config.data.data_dir ({e})") from None


def _as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(data_config: ml_collections.ConfigDict, split: str) -> list[str]:
    records = source(data_config, split)
    return [_as_text(record["text"]) for record in records.__getitems__(range(len(records)))]


@functools.lru_cache(maxsize=8)
def _document_tokens(settings: ml_collections.FrozenConfigDict, split: str) -> list[np.ndarray]:
    """Each document's tokens then <eos>, shared by every format and length of rows."""
    loaded = tokenizer(settings)
    eos = text_tokenizers.special_ids(loaded).eos
    return lm_formats.bodies(loaded, _texts(settings, split), eos)


@functools.lru_cache(maxsize=8)
def _lm_rows_of(data_config: ml_collections.FrozenConfigDict, split: str) -> dict[str, np.ndarray]:
    bodies = _document_tokens(_token_settings(data_config), split)
    ids = text_tokenizers.special_ids(tokenizer(data_config))
    return lm_formats.rows(text_format(data_config), data_config, bodies, ids)


def _lm_rows(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """The split as language-model rows: whole documents are packed or windowed together, so
    the split is computed at once (and kept) rather than example by example."""
    return _lm_rows_of(ml_collections.FrozenConfigDict(data_config), split)


def _preprocessor(data_config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
    """Decoded examples (stacked) -> model-ready arrays, for images or sentences."""

    def images(batch: dict) -> dict:
        return {"image": np.asarray(batch["image"], np.float32) / 255.0,
                "label": np.asarray(batch["label"], np.int32)}

    def sentences(batch: dict) -> dict:
        texts = [_as_text(t) for t in batch["text"]]
        encoded = tokenizer(data_config, data_config.max_length).encode_batch(texts)
        return {"input_ids": np.asarray([e.ids for e in encoded], np.int32),
                "attention_mask": np.asarray([e.attention_mask for e in encoded], np.int32)}

    def samples(batch: dict) -> dict:
        if "point" in batch:
            return {"x": np.asarray(batch["point"], np.float32)}
        # Images in [-1, 1], where σ_data = 0.5 (EDM's setting) describes them.
        return {"x": np.asarray(batch["image"], np.float32) / 127.5 - 1.0,
                "label": np.asarray(batch["label"], np.int32)}

    if generative(data_config):
        return samples
    return images if text_format(data_config) is None else sentences


def _stack(examples: list[dict]) -> dict:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def _gather(arrays: dict[str, np.ndarray]) -> Callable[[Any], dict]:
    return lambda indices: {key: value[np.asarray(indices)] for key, value in arrays.items()}


def reader(data_config: ml_collections.ConfigDict, split: str):
    """(number of examples, read) where `read(indices)` returns the preprocessed batch.

    With `data.cache` the split is decoded once into memory (as tf.data's `cache()` would) and
    batches are gathered by one vectorised index; otherwise each batch is read and decoded from
    the array_record files. Language-model rows are always held in memory (see `_lm_rows`).
    """
    if text_format(data_config) in lm_formats.FORMATS:
        num_rows, read = num_examples(data_config, split), _gather(_lm_rows(data_config, split))
        return num_rows, _with_teacher_targets(data_config, split, num_rows, read)
    records = source(data_config, split)
    preprocess = _preprocessor(data_config)
    if data_config.cache:
        return len(records), _gather(preprocess(_stack(records.__getitems__(range(len(records))))))
    return len(records), lambda indices: preprocess(_stack(records.__getitems__(list(indices))))


def _with_teacher_targets(data_config, split: str, num_rows: int, read):
    """`read`, joined row by row with the offline teacher targets when the run names a cache."""
    if not data_config.get("teacher_cache"):
        return read
    from jaxdistill import teacher_cache

    targets = teacher_cache.rows(data_config, split, num_rows)
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
