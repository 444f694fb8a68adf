"""Text datasets as model inputs: the format (sentences or language-model rows), the tokenizer,
and the split's LM rows, computed once per split and kept in memory."""

from __future__ import annotations

import functools

import ml_collections
import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from jaxdistill.data import lm_formats, sources, text_tokenizers
from jaxdistill.errors import DistillError

# Text datasets whose examples are sentences to embed; other text datasets are LM corpora.
SENTENCE_DATASETS = ("bundled_sentences",)
FORMATS = ("sentences", *lm_formats.FORMATS)


def text_format(data_config: ml_collections.ConfigDict) -> str | None:
    """How the dataset's text becomes model inputs (one of FORMATS); None for images."""
    if "text" not in sources.builder(data_config).info.features:
        return None
    chosen = data_config.get("format", "") or (
        "sentences" if data_config.name in SENTENCE_DATASETS else "packed")
    if chosen not in FORMATS:
        raise DistillError(f"unknown config.data.format {chosen!r}; choose one of"
                           f" {', '.join(FORMATS)}")
    return chosen


def _token_settings(data_config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The settings a text dataset's tokens depend on: the key of the caches below."""
    return ml_collections.FrozenConfigDict(
        {key: data_config[key] for key in ("name", "data_dir", "tokenizer")})


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
def _lm_rows_of(data_config: ml_collections.FrozenConfigDict, split: str) -> dict[str, np.ndarray]:
    bodies = _document_tokens(_token_settings(data_config), split)
    return lm_formats.rows(text_format(data_config), data_config, bodies,
                           special_ids(data_config))


def lm_rows(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """The split as language-model rows: whole documents are packed or windowed together, so
    the split is computed at once (and kept) rather than example by example."""
    return _lm_rows_of(ml_collections.FrozenConfigDict(data_config), split)
