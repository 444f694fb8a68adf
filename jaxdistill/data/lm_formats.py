"""Language-model rows from tokenized documents, computed once per split for random access.

A document's body is its tokens then <eos>; <bos> starts every sequence a model sees (`SpecialIds`
says which ids those are). Bodies hold no token a tokenizer's post-processor would add: the rows
add <bos> themselves, so a tokenizer that adds one (Llama 3's <|begin_of_text|>) does not give two,
nor make <bos> a target. Padding holds `SpecialIds.pad`, whatever id that is: the masks and
segment ids mark it, so a tokenizer needs no pad token of its own.

`packed` (rows of L = `max_length`): bodies are cut into pieces of at most L tokens and the pieces
packed first-fit decreasing into rows. A piece's `targets` are its tokens and its `input_ids` are
<bos> then the same tokens shifted right by one, so each piece predicts its first token from
<bos> alone (as a document's start is) and every body token is a target exactly once per pass
over the rows. Fields, all [L] int32: `input_ids`, `targets`, `segment_ids` (1..k for the pieces
of a row, left to right; 0 is padding), `positions` (from 0 in each piece) and `loss_mask` (1 on
every piece position, each of which has a real next token; 0 on padding).

`prompts` (P = `prompt_length`, C = `continuation_length`): windows of P − 1 + C body tokens tile
each body from its start, the last aligned to the body's end (overlapping the one before) so no
window is cut short; a body shorter than a window gives one window, split about in half. Fields:
`prompt` [P] (<bos> then the window's first P − 1 tokens, left-padded),
`prompt_mask` [P], `continuation` [C] (the rest, right-padded), `continuation_mask` [C].

Examples with a loss mask (file data of kind prompt_completion or messages: `completion_bodies`,
`chat_bodies`) give the same fields: a body is the example's tokens, and its mask is 1 on the
tokens that count as targets (the completion and <eos>; the assistant's turns). `fit` cuts or
drops each example to its row first, counting what it did (`Counts`); then `packed` places each
body whole as one piece, its mask as the piece's `loss_mask`, and `prompts` makes one row per
example: the prompt is the body up to its last masked run, the continuation that run.

Grain's packers are streaming iterator transforms; materialising a split through one costs about
0.1 ms per piece in Python, seconds per split here, so the split is packed here in numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import ml_collections
import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from jaxdistill.data import chat
from jaxdistill.data.text_tokenizers import SpecialIds
from jaxdistill.errors import DistillError

FORMATS = ("packed", "prompts")
TOO_LONG = ("truncate", "drop")


def prompt_lengths(data_config: ml_collections.ConfigDict) -> tuple[int, int]:
    return data_config.get("prompt_length", 64), data_config.get("continuation_length", 64)


def input_length(row_format: str, data_config: ml_collections.ConfigDict) -> int:
    """Tokens the language model reads per row: L packed, P + C for prompt and continuation."""
    if row_format == "prompts":
        return sum(prompt_lengths(data_config))
    return data_config.max_length


def bodies(tokenizer: Tokenizer, texts: Iterable[str], eos: int) -> list[np.ndarray]:
    """Each text's tokens, without the tokenizer's special tokens, then `eos`."""
    return [np.asarray([*encoding.ids, eos], np.int32)
            for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def completion_bodies(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                      eos: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each (prompt, completion) as the prompt's tokens, the completion's, then `eos` (each text
    encoded alone, so the boundary is exact), masked 1 on the completion and `eos`."""
    prompts = bodies(tokenizer, [prompt for prompt, _ in pairs], eos)
    completions = bodies(tokenizer, [completion for _, completion in pairs], eos)
    return ([np.concatenate([prompt[:-1], completion]) for prompt, completion
             in zip(prompts, completions)],
            [np.concatenate([np.zeros(len(prompt) - 1, np.int32), np.ones(len(completion),
                                                                          np.int32)])
             for prompt, completion in zip(prompts, completions)])


def chat_bodies(tokenizer: PreTrainedTokenizerFast, conversations: Sequence[Sequence[dict]],
                bos: int, where: Callable[[int], str]) -> tuple[list[np.ndarray],
                                                                 list[np.ndarray]]:
    """Each conversation as its chat template renders it (`chat.tokenize`), masked 1 on the
    assistant's tokens, without a leading `bos` (the rows add it); `where(i)` names conversation
    i in an error."""
    found, masks = [], []
    for i, messages in enumerate(conversations):
        try:
            ids, mask = chat.tokenize(tokenizer, messages)
        except DistillError as error:
            raise DistillError(f"{where(i)}: {error}") from None
        start = int(bool(ids) and ids[0] == bos)
        found.append(np.asarray(ids[start:], np.int32))
        masks.append(np.asarray(mask[start:], np.int32))
    return found, masks


@dataclasses.dataclass(frozen=True)
class Counts:
    """What became of a split's examples: of those read, each is kept whole, kept cut to its
    row (`truncated`), dropped as longer than a row (`too_long`), or dropped as having no token
    to learn from (`no_target`: no assistant turn, its completion cut away, an empty document);
    and the rows the kept ones made."""

    examples: int
    truncated: int = 0
    too_long: int = 0
    no_target: int = 0
    rows: int = 0

    def __str__(self) -> str:
        dropped = [f"{count} {what}" for count, what in (
            (self.truncated, "truncated"), (self.too_long, "dropped as too long"),
            (self.no_target, "dropped with no token to learn from")) if count]
        return (f"{self.examples} examples -> {self.rows} rows"
                + (f" ({', '.join(dropped)})" if dropped else ""))


def _last_run(mask: np.ndarray) -> tuple[int, int]:
    """Start and end of the last run of 1s in `mask` (which has one)."""
    end = int(np.flatnonzero(mask)[-1]) + 1
    zeros = np.flatnonzero(mask[:end] == 0)
    return (int(zeros[-1]) + 1 if len(zeros) else 0), end


def fit(row_format: str, data_config: ml_collections.ConfigDict, bodies: list[np.ndarray],
        masks: list[np.ndarray] | None) -> tuple[list[np.ndarray], list[np.ndarray] | None,
                                                   Counts]:
    """The examples that make rows, each cut to fit its row, and what became of them.

    Documents (no masks) are cut into rows by `packed` and `prompts` themselves: only empty
    ones (a body of <eos> alone) are dropped. A masked example too long for its row is cut
    (config.data.too_long = "truncate") or dropped ("drop"). Packed, its row holds max_length
    tokens: truncation keeps the first. As prompts, the prompt keeps its last P - 1 tokens
    (<bos> comes first) and the continuation, its last masked run, its first C."""
    too_long = data_config.get("too_long", "truncate")
    if too_long not in TOO_LONG:
        raise DistillError(f"unknown config.data.too_long {too_long!r}; choose one of"
                           f" {', '.join(TOO_LONG)}")
    if masks is None:
        kept = [body for body in bodies if len(body) > 1]
        return kept, None, Counts(examples=len(bodies), no_target=len(bodies) - len(kept))
    prompt_length, continuation_length = prompt_lengths(data_config)
    kept, kept_masks, counts = [], [], dict(truncated=0, too_long=0, no_target=0)
    for body, mask in zip(bodies, masks):
        if not mask.any():
            counts["no_target"] += 1
            continue
        if row_format == "prompts":
            split, end = _last_run(mask)
            span = slice(max(0, split - (prompt_length - 1)), min(end, split + continuation_length))
            cut = span != slice(0, end)
        else:
            span = slice(0, data_config.max_length)
            cut = len(body) > data_config.max_length
        if cut and too_long == "drop":
            counts["too_long"] += 1
            continue
        if not mask[span].any():
            counts["no_target"] += 1
            continue
        counts["truncated"] += cut
        kept.append(body[span])
        kept_masks.append(mask[span])
    return kept, kept_masks, Counts(examples=len(bodies), **counts)


def _first_fit(lengths: list[int], capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and start of each piece, placed in this order into the first row with room."""
    space = np.full(len(lengths), capacity)  # at most one row per piece; unused rows stay full
    rows, starts = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64)
    full = 0  # rows before this one have no room left, so the search skips them
    for i, length in enumerate(lengths):
        rows[i] = row = full + int(np.argmax(space[full:] >= length))
        starts[i] = capacity - space[row]
        space[row] -= length
        while full < len(space) and space[full] == 0:
            full += 1
    return rows, starts


def packed(bodies: list[np.ndarray], length: int, ids: SpecialIds,
           masks: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Packed rows of `length`: documents (no `masks`) cut into pieces of `length`, or masked
    examples (each at most `length` tokens, see `fit`) placed whole, their masks as loss_mask."""
    if masks is None:
        pieces = [body[start:start + length] for body in bodies
                  for start in range(0, len(body), length)]
        masks = [np.ones(len(piece), np.int32) for piece in pieces]
    else:
        pieces = bodies
        if max(map(len, pieces)) > length:
            raise ValueError(f"a masked example is longer than a row of {length}: fit it first")
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]), reverse=True)
    rows, starts = _first_fit([len(pieces[i]) for i in order], length)
    shape = (int(rows.max()) + 1, length)
    fields = {"input_ids": np.full(shape, ids.pad, np.int32),
              "targets": np.full(shape, ids.pad, np.int32),
              "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32),
              "loss_mask": np.zeros(shape, np.int32)}
    for i, row, start in zip(order, rows, starts):
        piece = pieces[i]
        span = slice(start, start + len(piece))
        fields["targets"][row, span] = piece
        fields["input_ids"][row, span] = np.concatenate([[ids.bos], piece[:-1]])
        # Pieces fill a row left to right, so the one before this ends at start - 1.
        fields["segment_ids"][row, span] = fields["segment_ids"][row, start - 1] + 1 if start else 1
        fields["positions"][row, span] = np.arange(len(piece))
        fields["loss_mask"][row, span] = masks[i]
    return fields


def windows(size: int, prompt_tokens: int, continuation_tokens: int) -> list[tuple[int, int, int]]:
    """(start, split, end) of each window of a body of `size` tokens: the prompt takes tokens
    [start, split), the continuation [split, end)."""
    width = prompt_tokens + continuation_tokens
    if size < width:
        return [(0, int(np.clip(size // 2, size - continuation_tokens, prompt_tokens)), size)]
    starts = list(range(0, size - width + 1, width))
    if starts[-1] + width < size:
        starts.append(size - width)
    return [(start, start + prompt_tokens, start + width) for start in starts]


def prompts(bodies: list[np.ndarray], prompt_length: int, continuation_length: int,
            ids: SpecialIds, masks: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Prompt and continuation rows: windows of documents (no `masks`), or one row per masked
    example (fitted, see `fit`), continuing its prompt with its last masked run."""
    if masks is None:
        spans = [(body, *window) for body in bodies
                 for window in windows(len(body), prompt_length - 1, continuation_length)]
    else:
        spans = [(body, 0, _last_run(mask)[0], _last_run(mask)[1])
                 for body, mask in zip(bodies, masks)]
    fields = {"prompt": np.full((len(spans), prompt_length), ids.pad, np.int32),
              "prompt_mask": np.zeros((len(spans), prompt_length), np.int32),
              "continuation": np.full((len(spans), continuation_length), ids.pad, np.int32),
              "continuation_mask": np.zeros((len(spans), continuation_length), np.int32)}
    for row, (body, start, split, end) in enumerate(spans):
        prompt_start = prompt_length - 1 - (split - start)
        fields["prompt"][row, prompt_start:] = np.concatenate([[ids.bos], body[start:split]])
        fields["prompt_mask"][row, prompt_start:] = 1
        fields["continuation"][row, :end - split] = body[split:end]
        fields["continuation_mask"][row, :end - split] = 1
    return fields


def rows(row_format: str, data_config: ml_collections.ConfigDict, bodies: list[np.ndarray],
         ids: SpecialIds, masks: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The split's rows in `row_format` (one of FORMATS), as arrays with one row per example."""
    if row_format == "prompts":
        return prompts(bodies, *prompt_lengths(data_config), ids, masks)
    return packed(bodies, data_config.max_length, ids, masks)
