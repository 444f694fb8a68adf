"""Tokenizers for the text datasets, named by `config.data.tokenizer`.

- `byte`: <pad>=0, <bos>=1, <eos>=2 and the 256 bytes (259 tokens): any text round-trips exactly.
- `bpe:N`: byte-level BPE of N tokens in all (the same specials and bytes plus N − 259 merges),
  trained on the dataset's train split only and saved as `bpe-N/tokenizer.json` beside the
  prepared dataset, where later runs find it. Training is deterministic, so processes that train
  it at the same time write the same file.
- anything else names a pretrained model: a directory (or known name) holding tokenizer.json,
  with its special tokens and chat template in tokenizer_config.json / special_tokens_map.json
  and, optionally, the ids that end generation in generation_config.json.

Every kind is loaded as a `transformers.PreTrainedTokenizerFast` (which needs no torch), so the
special tokens, chat template and size of each are read one way, and a pretrained one encodes
exactly as `transformers` does; its `backend_tokenizer` (a `tokenizers.Tokenizer`) encodes the
data. Both byte-level tokenizers are BPE models on GPT-2's byte alphabet (the byte one has no
merges), and read special tokens only as ids: a document containing the text "<eos>" encodes it
as bytes.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Callable, Iterable

from etils import epath
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jaxdistill.errors import DistillError
from jaxdistill.models import pretrained

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The ids that language-model rows and generation need.

    pad: fills padding, which masks mark, so any id serves: the pad token, else eos.
    bos: starts every row: the bos token, else eos (GPT-2-style tokenizers have no bos).
    eos: ends every document.
    eos_ids: every id that ends generation, eos first, then those of generation_config.json
      (else config.json), e.g. Llama 3 Instruct's <|end_of_text|> beside its eos <|eot_id|>.
    """

    pad: int
    bos: int
    eos: int
    eos_ids: tuple[int, ...]


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
    return tokenizer


def with_special_tokens(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A byte or bpe tokenizer as `transformers` sees it: <pad>, <bos> and <eos> in their roles,
    read only as ids (never from a document's text)."""
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, bos_token=bos,
                                   eos_token=eos, split_special_tokens=True)


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
    return Tokenizer.from_str(path.read_text())


def load(name: str, directory: epath.Path,
         train_texts: Callable[[], Iterable[str]]) -> PreTrainedTokenizerFast:
    """The tokenizer `name` (see the module doc); `bpe:N` is trained on `train_texts()` the first
    time and saved under `directory` (the prepared dataset's)."""
    if not name:
        raise DistillError("a text dataset needs config.data.tokenizer: 'byte', 'bpe:N' (trained"
                           " on the dataset), or a pretrained model's name or directory (its"
                           " tokenizer.json)")
    if name == "byte":
        return with_special_tokens(byte_level_bpe(BYTE_VOCAB_SIZE, []))
    if name.startswith("bpe:"):
        return with_special_tokens(_trained_bpe(_bpe_size(name), directory, train_texts))
    return pretrained.load_tokenizer(pretrained.resolve_path(name))


def pad_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The id padding is filled with: the pad token, else eos (as is usual for tokenizers without
    one), else 0. Masks mark padding, so the id itself is never read."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def special_ids(tokenizer: PreTrainedTokenizerFast | Tokenizer) -> SpecialIds:
    """The ids language-model rows and generation need (see `SpecialIds`). A bare
    `tokenizers.Tokenizer` records no special-token roles, so only a byte or bpe one is read."""
    if isinstance(tokenizer, Tokenizer):
        if None in map(tokenizer.token_to_id, SPECIAL_TOKENS):
            raise DistillError("a bare tokenizers.Tokenizer names no bos/eos/pad tokens: read"
                               " those of a pretrained tokenizer from its transformers tokenizer"
                               " (text_tokenizers.load)")
        tokenizer = with_special_tokens(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DistillError(f"language-model data needs an end-of-sequence token, which the"
                           f" tokenizer at {tokenizer.name_or_path!r} lacks: set eos_token in its"
                           " tokenizer_config.json")
    bos = eos if tokenizer.bos_token_id is None else tokenizer.bos_token_id
    directory = tokenizer.name_or_path  # "" for byte and bpe tokenizers, which have no files
    more_eos = [i for i in pretrained.eos_ids(directory) if i != eos] if directory else []
    return SpecialIds(pad=pad_id(tokenizer), bos=bos, eos=eos, eos_ids=(eos, *more_eos))


def size(tokenizer: PreTrainedTokenizerFast) -> int:
    """The rows a model's embedding needs to read every id the tokenizer gives: its highest id
    + 1, which is len(tokenizer) (added tokens included) when the ids leave no gap."""
    return max(tokenizer.get_vocab().values()) + 1


def _shown(token: str | None) -> str:
    return "absent" if token is None else repr(token)


def difference(a: PreTrainedTokenizerFast, b: PreTrainedTokenizerFast,
               names: tuple[str, str] = ("in one", "in the other")) -> str | None:
    """The first way `a` and `b` differ, in one line, or None when they agree: the same token
    at every id (added tokens included) and the same bos, eos and pad tokens. `names` says
    where each tokenizer is from, in that line."""
    tokens_a = {i: token for token, i in a.get_vocab().items()}
    tokens_b = {i: token for token, i in b.get_vocab().items()}
    if tokens_a != tokens_b:
        first = min(i for i in tokens_a.keys() | tokens_b.keys()
                    if tokens_a.get(i) != tokens_b.get(i))
        return (f"token {first} is {_shown(tokens_a.get(first))} {names[0]} and"
                f" {_shown(tokens_b.get(first))} {names[1]}")
    for role in ("bos", "eos", "pad"):
        token_a, token_b = getattr(a, f"{role}_token"), getattr(b, f"{role}_token")
        if token_a != token_b:
            return (f"the {role} token is {_shown(token_a)} {names[0]} and {_shown(token_b)}"
                    f" {names[1]}")
    return None
