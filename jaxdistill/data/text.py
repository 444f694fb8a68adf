"""Text datasets as model inputs: the format (sentences or language-model rows), the tokenizer,
and the split's LM rows, computed once per split and kept in memory. The text comes from a TFDS
dataset (config.data.name) or from the user's files (config.data.files, see `files`)."""

from __future__ import annotations

import dataclasses
import functools

import ml_collections
import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from jaxdistill.data import files, lm_formats, sources, text_tokenizers
from jaxdistill.errors import DistillError

# Text datasets whose examples are sentences to embed; other text datasets are LM corpora.
SENTENCE_DATASETS = ("bundled_sentences",)
FORMATS = ("sentences", *lm_formats.FORMATS)


def text_format(data_config: ml_collections.ConfigDict) -> str | None:
    """How the dataset's text becomes model inputs (one of FORMATS); None for images."""
    if files.used(data_config):
        chosen = data_config.get("format", "") or "packed"
        if chosen not in lm_formats.FORMATS:
            raise DistillError(f"config.data.format={chosen!r}: data from files is language-model"
                               f" data; choose one of {', '.join(lm_formats.FORMATS)}")
        return chosen
    if "text" not in sources.builder(data_config).info.features:
        return None
    chosen = data_config.get("format", "") or (
        "sentences" if data_config.name in SENTENCE_DATASETS else "packed")
    if chosen not in FORMATS:
        raise DistillError(f"unknown config.data.format {chosen!r}; choose one of"
                           f" {', '.join(FORMATS)}")
    return chosen


def _token_settings(data_config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The settings a text dataset's tokens depend on: the key of the caches below. Data from
    files depends on their settings (`files.KEYS`) and not on the dataset's name."""
    settings = {key: data_config.get(key, "") for key in ("name", "data_dir", "tokenizer")}
    settings.update(files.settings(data_config))
    if files.used(data_config):
        settings["name"] = ""
    return ml_collections.FrozenConfigDict(settings)


def transformers_tokenizer(data_config: ml_collections.ConfigDict) -> PreTrainedTokenizerFast:
    """The text dataset's tokenizer as `transformers` has it (see `text_tokenizers`): its special
    tokens, chat template and size. Shared between callers, so leave its settings alone."""
    return _shared_tokenizer(_token_settings(data_config))


def special_ids(data_config: ml_collections.ConfigDict) -> text_tokenizers.SpecialIds:
    """The pad, bos and eos ids of the dataset's language-model rows, and every eos id."""
    return text_tokenizers.special_ids(transformers_tokenizer(data_config))


def tokenizer(data_config: ml_collections.ConfigDict, max_length: int | None = None) -> Tokenizer:
    """The text dataset's encoder, the `tokenizers.Tokenizer` behind `transformers_tokenizer`;
    with `max_length` it truncates and pads every encoding to that many tokens, and without it
    it encodes texts whole."""
    return _tokenizer(_token_settings(data_config), max_length)


def _load(settings: ml_collections.FrozenConfigDict) -> PreTrainedTokenizerFast:
    if files.used(settings):  # a bpe tokenizer is kept beside what else the files make
        directory = (files.cache_directory(settings) if settings.tokenizer.startswith("bpe:")
                     else None)
        return text_tokenizers.load(settings.tokenizer, directory,
                                    lambda: files.train_texts(settings))
    return text_tokenizers.load(settings.tokenizer, sources.builder(settings).data_path,
                                lambda: sources.texts(settings, "train"))


@functools.lru_cache(maxsize=4)
def _shared_tokenizer(settings: ml_collections.FrozenConfigDict) -> PreTrainedTokenizerFast:
    return _load(settings)


@functools.lru_cache(maxsize=4)
def _tokenizer(settings: ml_collections.FrozenConfigDict, max_length: int | None) -> Tokenizer:
    loaded = _load(settings)  # its own copy: its encoder's padding is set here
    encoder = loaded.backend_tokenizer
    if max_length:
        pad = text_tokenizers.pad_id(loaded)
        encoder.enable_truncation(max_length)
        encoder.enable_padding(length=max_length, pad_id=pad,
                               pad_token=loaded.convert_ids_to_tokens(pad))
    else:  # documents are encoded whole, whatever a pretrained tokenizer.json sets
        encoder.no_truncation()
        encoder.no_padding()
    return encoder


@functools.lru_cache(maxsize=8)
def _document_tokens(settings: ml_collections.FrozenConfigDict, split: str) -> list[np.ndarray]:
    """Each document's tokens then <eos>, shared by every format and length of rows."""
    return lm_formats.bodies(tokenizer(settings), sources.texts(settings, split),
                             special_ids(settings).eos)


@functools.lru_cache(maxsize=8)
def _example_tokens(settings: ml_collections.FrozenConfigDict, split: str
                    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Each example's tokens read from files, and its loss mask (None for documents, whose
    tokens all count), shared by every format and length of rows."""
    examples = files.examples(settings, split)
    ids = special_ids(settings)
    if examples.kind == "text":
        return lm_formats.bodies(tokenizer(settings), examples.values, ids.eos), None
    if examples.kind == "prompt_completion":
        return lm_formats.completion_bodies(tokenizer(settings), examples.values, ids.eos)
    return lm_formats.chat_bodies(transformers_tokenizer(settings), examples.values, ids.bos,
                                  lambda i: str(examples.origins[i]))


@functools.lru_cache(maxsize=8)
def _lm_rows_of(data_config: ml_collections.FrozenConfigDict, split: str
                ) -> tuple[dict[str, np.ndarray], lm_formats.Counts | None]:
    row_format, ids = text_format(data_config), special_ids(data_config)
    if not files.used(data_config):
        bodies = _document_tokens(_token_settings(data_config), split)
        return lm_formats.rows(row_format, data_config, bodies, ids), None
    bodies, masks = _example_tokens(_token_settings(data_config), split)
    bodies, masks, counts = lm_formats.fit(row_format, data_config, bodies, masks)
    if not bodies:
        reasons = [f"{count} {why}" for count, why in (
            (counts.too_long, "longer than a row (config.data.too_long='drop')"),
            (counts.no_target, "with no token to learn from (no assistant turn, its completion"
                               " cut away, or empty)")) if count]
        raise DistillError(f"split {split!r} of files {data_config.files} has no example left of"
                           f" {counts.examples}: {', '.join(reasons)}; lengthen the rows"
                           " (config.data.max_length, or prompt_length and continuation_length)"
                           " or fix the examples")
    found = lm_formats.rows(row_format, data_config, bodies, ids, masks)
    return found, dataclasses.replace(counts, rows=len(next(iter(found.values()))))


def lm_rows(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """The split as language-model rows: whole documents are packed or windowed together, so
    the split is computed at once (and kept) rather than example by example."""
    return _lm_rows_of(ml_collections.FrozenConfigDict(data_config), split)[0]


def counts(data_config: ml_collections.ConfigDict, split: str) -> lm_formats.Counts | None:
    """What became of the split's examples on their way into rows (`lm_formats.Counts`), for
    data from files; None for a TFDS dataset."""
    return _lm_rows_of(ml_collections.FrozenConfigDict(data_config), split)[1]
