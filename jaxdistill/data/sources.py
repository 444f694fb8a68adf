"""The TFDS datasets behind every pipeline: builders (the bundled ones prepared offline on first
use) and random-access array_record sources of their splits."""

from __future__ import annotations

import functools
import os

import ml_collections
import tensorflow_datasets as tfds

from jaxdistill.data import bundled_docs, bundled_sentences, sklearn_digits, toy_2d  # noqa: F401
from jaxdistill.errors import DistillError

tfds.display_progress_bar(False)

# Datasets that ship with the installed packages: prepared offline on first use.
BUNDLED = ("sklearn_digits", "bundled_sentences", "bundled_docs", "toy_2d")


def builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The dataset's builder, made (and for a bundled dataset prepared) once per process."""
    return _builder(data_config.name, data_config.data_dir or None)


@functools.lru_cache(maxsize=16)
def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    if not name or os.path.exists(name):
        raise DistillError(
            f"config.data.name={name!r} must name a TFDS dataset ({' or '.join(map(repr, BUNDLED))}"
            " offline, or one such as 'mnist' prepared under config.data.data_dir), or set"
            " config.data.files to your data files")
    try:
        found = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DistillError(
            f"unknown dataset {name!r}; use {' or '.join(map(repr, BUNDLED))} offline"
            " or a TFDS name such as 'mnist'") from None
    if name.split("/")[0] in BUNDLED:
        found.download_and_prepare(file_format="array_record")
    return found


def bundled(data_config: ml_collections.ConfigDict) -> bool:
    return data_config.name.split("/")[0] in BUNDLED


def generative(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the run models the data itself (task "generation": diffusion, flow and
    consistency models) rather than predicting labels or tokens."""
    return data_config.get("task", "") == "generation" or "point" in builder(
        data_config).info.features


def source(data_config: ml_collections.ConfigDict, split: str):
    """A random-access array_record source for `split`, preparing the dataset if needed."""
    prepared = builder(data_config)
    try:
        return tfds.data_source(
            data_config.name, split=split, data_dir=data_config.data_dir or None,
            download=bundled(data_config))
    except (AssertionError, FileNotFoundError, NotImplementedError):
        # TFDS says "not prepared" in several types, the last one for a missing array_record.
        data_dir = data_config.data_dir or "~/tensorflow_datasets"
        raise DistillError(
            f"dataset {data_config.name!r} split {split!r} is not prepared in array_record"
            f" format under {prepared.data_dir}; prepare it once with `python -c \"import"
            f" tensorflow_datasets as tfds; tfds.builder('{data_config.name}',"
            f" data_dir='{data_dir}').download_and_prepare(file_format='array_record')\"`"
            " where it can be downloaded, or set config.data.data_dir to where it is"
            " prepared") from None


def as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(data_config: ml_collections.ConfigDict, split: str) -> list[str]:
    records = source(data_config, split)
    return [as_text(record["text"]) for record in records.__getitems__(range(len(records)))]
