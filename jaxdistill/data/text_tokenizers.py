"""Tokenizers for the text datasets, named by `config.data.tokenizer`, built with `tokenizers`.

- `byte`: <pad>=0, <bos>=1, <eos>=2 and the 256 bytes (259 tokens): any text round-trips exactly.
- `bpe:N`: byte-level BPE of N tokens in all (the same specials and bytes plus N − 259 merges),
  trained on the dataset's train split only and saved as `bpe-N/tokenizer.json` beside the
  prepared dataset, where later runs find it. Training is deterministic, so processes that train
  it at the same time write the same file.
- anything else names a pretrained model (a directory or known name holding tokenizer.json).

Both byte-level tokenizers are BPE models on GPT-2's byte alphabet (the byte one has no merges),
and read special tokens only as ids: a document containing the text "<eos>" encodes it as bytes.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Callable, Iterable

from etils import epath
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxdistill.errors import DistillError
from jaxdistill.models import pretrained

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int
    eos: int


def byte_level_bpe(vocab_size: int, texts: Iterable[str]) -> Tokenizer:
    """Byte-level BPE of `vocab_size` tokens in all, trained on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise DistillError(f"the training split yields a BPE vocabulary of only"
                           f" {tokenizer.get_vocab_size()} tokens, not bpe:{vocab_size}")
    return _specials_as_ids_only(tokenizer)


def _specials_as_ids_only(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.encode_special_tokens = True  # not serialised: set on every load
    return tokenizer


def _bpe_size(name: str) -> int:
    size = name.removeprefix("bpe:")
    if not size.isdigit() or int(size) <= BYTE_VOCAB_SIZE:
        raise DistillError(f"config.data.tokenizer={name!r}: give bpe:N with N > {BYTE_VOCAB_SIZE}"
                           " tokens in all (the specials and 256 bytes, then merges)")
    return int(size)


def _trained_bpe(size: int, directory: epath.Path,
                 train_texts: Callable[[], Iterable[str]]) -> Tokenizer:
    path = directory / f"bpe-{size}" / "tokenizer.json"
    if not path.exists():
        trained = byte_level_bpe(size, train_texts())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.parent / f"tokenizer.json.{uuid.uuid4().hex}.tmp"
        partial.write_text(trained.to_str())
        partial.replace(path)  # whole or absent, whichever process renames last
    return _specials_as_ids_only(Tokenizer.from_str(path.read_text()))


def load(name: str, directory: epath.Path,
         train_texts: Callable[[], Iterable[str]]) -> Tokenizer:
    """The tokenizer `name` (see the module doc); `bpe:N` is trained on `train_texts()` the first
    time and saved under `directory` (the prepared dataset's)."""
    if not name:
        raise DistillError("a text dataset needs config.data.tokenizer: 'byte', 'bpe:N' (trained"
                           " on the dataset), or a pretrained model's name or directory (its"
                           " tokenizer.json)")
    if name == "byte":
        return byte_level_bpe(BYTE_VOCAB_SIZE, [])
    if name.startswith("bpe:"):
        return _trained_bpe(_bpe_size(name), directory, train_texts)
    return pretrained.load_tokenizer(pretrained.resolve_path(name))


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """<pad>, <bos> and <eos> ids, which language-model rows need (<pad> must be 0)."""
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if None in ids or ids[0] != 0:
        raise DistillError("language-model data needs a tokenizer with <pad>=0, <bos> and <eos>:"
                           " set config.data.tokenizer to 'byte' or 'bpe:N'")
    return SpecialIds(*ids)
