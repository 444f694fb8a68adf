"""Text datasets as model inputs: the format (sentences or language-model rows), the tokenizer,
and the split's LM rows, computed once per split and kept in memory."""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

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


def tokenizer(data_config: ml_collections.ConfigDict, max_length: int | None = None):
    """The text dataset's `tokenizers.Tokenizer` (see `text_tokenizers`); with `max_length` it
    truncates and pads every encoding to that many tokens."""
    return _tokenizer(_token_settings(data_config), max_length)


@functools.lru_cache(maxsize=4)
def _tokenizer(data_config: ml_collections.FrozenConfigDict, max_length: int | None):
    loaded = text_tokenizers.load(data_config.tokenizer, sources.builder(data_config).data_path,
                                  lambda: sources.texts(data_config, "train"))
    if max_length:
        pad = loaded.padding or {"pad_id": 0, "pad_token": "[PAD]"}
        loaded.enable_truncation(max_length)
        loaded.enable_padding(length=max_length, pad_id=pad["pad_id"], pad_token=pad["pad_token"])
    return loaded


@functools.lru_cache(maxsize=8)
def _document_tokens(settings: ml_collections.FrozenConfigDict, split: str) -> list[np.ndarray]:
    """Each document's tokens then <eos>, shared by every format and length of rows."""
    loaded = tokenizer(settings)
    eos = text_tokenizers.special_ids(loaded).eos
    return lm_formats.bodies(loaded, sources.texts(settings, split), eos)


@functools.lru_cache(maxsize=8)
def _lm_rows_of(data_config: ml_collections.FrozenConfigDict, split: str) -> dict[str, np.ndarray]:
    bodies = _document_tokens(_token_settings(data_config), split)
    ids = text_tokenizers.special_ids(tokenizer(data_config))
    return lm_formats.rows(text_format(data_config), data_config, bodies, ids)


def lm_rows(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """The split as language-model rows: whole documents are packed or windowed together, so
    the split is computed at once (and kept) rather than example by example."""
    return _lm_rows_of(ml_collections.FrozenConfigDict(data_config), split)
