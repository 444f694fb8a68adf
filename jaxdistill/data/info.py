"""What a dataset is, as the models must agree with it: `DatasetSpec` (task, inputs, split
sizes, classes or vocabulary), read from the TFDS metadata (or, for data from files, from the
rows made of them) before anything compiles; and `summary`, the line a run starts with."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from jaxdistill.data import files, lm_formats, sources, text, text_tokenizers


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
    name: str = ""                              # the TFDS dataset's name, or "files PATHS"

    def example_inputs(self) -> tuple[np.ndarray, ...]:
        """One example of each model input, batched: what `module.init` is traced with."""
        return tuple(np.ones((1, *shape), dtype) for shape, dtype in self.inputs.values())


def name(data_config: ml_collections.ConfigDict) -> str:
    """What the data is called in messages: the TFDS dataset's name, or the files'."""
    return f"files {data_config.files}" if files.used(data_config) else data_config.name


def spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
    if files.used(data_config):
        return _lm_spec(data_config, {split: num_examples(data_config, split)
                                      for split in files.split_names(data_config)})
    info = sources.builder(data_config).info
    split_sizes = {split: num_examples(data_config, split) for split in info.splits}
    if sources.generative(data_config):
        return _generation_spec(info, split_sizes, name(data_config))
    text_format = text.text_format(data_config)
    if text_format == "sentences":
        length = data_config.max_length
        return DatasetSpec(
            task="sentences", split_sizes=split_sizes, format=text_format, name=name(data_config),
            inputs={"input_ids": ((length,), np.int32), "attention_mask": ((length,), np.int32)},
            vocab_size=text_tokenizers.size(text.transformers_tokenizer(data_config)))
    if text_format in lm_formats.FORMATS:
        return _lm_spec(data_config, split_sizes)
    return DatasetSpec(
        task="classification", split_sizes=split_sizes,
        inputs={"image": (tuple(info.features["image"].shape), np.float32)},
        num_classes=info.features["label"].num_classes, name=name(data_config))


def _lm_spec(data_config: ml_collections.ConfigDict, split_sizes: dict[str, int]) -> DatasetSpec:
    text_format = text.text_format(data_config)
    return DatasetSpec(
        task="lm", split_sizes=split_sizes, format=text_format, name=name(data_config),
        inputs={"input_ids": ((lm_formats.input_length(text_format, data_config),), np.int32)},
        vocab_size=text_tokenizers.size(text.transformers_tokenizer(data_config)),
        special_ids=text.special_ids(data_config))


def _generation_spec(info, split_sizes: dict[str, int], called: str) -> DatasetSpec:
    """A denoiser's inputs: the noisy sample, its time, and the class where the data has one."""
    features = info.features
    sample = features["point"] if "point" in features else features["image"]
    inputs = {"x": (tuple(sample.shape), np.float32), "time": ((), np.float32)}
    num_classes = features["label"].num_classes if "label" in features else None
    if num_classes:
        inputs["label"] = ((), np.int32)
    return DatasetSpec(task="generation", inputs=inputs, split_sizes=split_sizes,
                       num_classes=num_classes, name=called)


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Examples in `split`, which may be a TFDS slice such as 'train[:10%]' (for language-model
    formats, data from files included: rows)."""
    if text.text_format(data_config) in lm_formats.FORMATS:
        return len(next(iter(text.lm_rows(data_config, split).values())))
    return sources.builder(data_config).info.splits[split].num_examples


def steps_per_epoch(data_config: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """Optimizer steps in one pass over the training split (fractional: epochs run across
    batches, see `train_iterator`)."""
    return num_examples(data_config, data_config.train_split) / global_batch_size


def summary(data_config: ml_collections.ConfigDict) -> str:
    """One line on what became of the examples of data from files, for a run's start-up summary
    ("" for a TFDS dataset): their kind and row format, then per split the examples read, the
    rows made, and how many were truncated or dropped (see `lm_formats.Counts`), e.g.
    "data: messages from files chats/*.jsonl as packed rows of 512: train 950 examples ->
    301 rows (12 truncated); validation 50 examples -> 17 rows"."""
    if not files.used(data_config):
        return ""
    text_format = text.text_format(data_config)
    kind = files.examples(data_config, "train").kind
    shape = (f"packed rows of {data_config.max_length}" if text_format == "packed" else
             "prompts of {} + {} tokens".format(*lm_formats.prompt_lengths(data_config)))
    splits = "; ".join(f"{split} {text.counts(data_config, split)}"
                       for split in files.split_names(data_config))
    return f"data: {kind} from {name(data_config)} as {shape}: {splits}"
