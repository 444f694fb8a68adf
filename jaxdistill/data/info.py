"""What a dataset is, as the models must agree with it: `DatasetSpec` (task, inputs, split
sizes, classes or vocabulary), read from the TFDS metadata before anything compiles."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from jaxdistill.data import lm_formats, sources, text, text_tokenizers


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the models must agree with, read from the TFDS metadata before anything compiles."""

    task: str                                   # "classification", "sentences" or "lm"
    inputs: dict[str, tuple[tuple[int, ...], Any]]  # model input name -> (example shape, dtype)
    split_sizes: dict[str, int]                 # examples per split (for "lm": rows)
    num_classes: int | None = None
    vocab_size: int | None = None               # text: the ids the tokenizer gives (highest + 1)
    special_ids: text_tokenizers.SpecialIds | None = None  # "lm": pad, bos, eos and every eos id
    format: str | None = None                   # text datasets: one of text.FORMATS

    def example_inputs(self) -> tuple[np.ndarray, ...]:
        """One example of each model input, batched: what `module.init` is traced with."""
        return tuple(np.ones((1, *shape), dtype) for shape, dtype in self.inputs.values())


def spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
    info = sources.builder(data_config).info
    split_sizes = {name: num_examples(data_config, name) for name in info.splits}
    if sources.generative(data_config):
        return _generation_spec(info, split_sizes)
    text_format = text.text_format(data_config)
    if text_format == "sentences":
        length = data_config.max_length
        return DatasetSpec(
            task="sentences", split_sizes=split_sizes, format=text_format,
            inputs={"input_ids": ((length,), np.int32), "attention_mask": ((length,), np.int32)},
            vocab_size=text_tokenizers.size(text.transformers_tokenizer(data_config)))
    if text_format in lm_formats.FORMATS:
        return DatasetSpec(
            task="lm", split_sizes=split_sizes, format=text_format,
            inputs={"input_ids": ((lm_formats.input_length(text_format, data_config),),
                                  np.int32)},
            vocab_size=text_tokenizers.size(text.transformers_tokenizer(data_config)),
            special_ids=text.special_ids(data_config))
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
    if text.text_format(data_config) in lm_formats.FORMATS:
        return len(next(iter(text.lm_rows(data_config, split).values())))
    return sources.builder(data_config).info.splits[split].num_examples


def steps_per_epoch(data_config: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """Optimizer steps in one pass over the training split (fractional: epochs run across
    batches, see `train_iterator`)."""
    return num_examples(data_config, data_config.train_split) / global_batch_size
