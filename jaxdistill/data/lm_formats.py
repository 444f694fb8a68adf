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

Grain's packers are streaming iterator transforms; materialising a split through one costs about
0.1 ms per piece in Python, seconds per split here, so the split is packed here in numpy.
"""

from __future__ import annotations

from typing import Iterable

import ml_collections
import numpy as np
from tokenizers import Tokenizer

from jaxdistill.data.text_tokenizers import SpecialIds

FORMATS = ("packed", "prompts")


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


def packed(bodies: list[np.ndarray], length: int, ids: SpecialIds) -> dict[str, np.ndarray]:
    pieces = sorted((body[start:start + length] for body in bodies
                     for start in range(0, len(body), length)), key=len, reverse=True)
    rows, starts = _first_fit([len(piece) for piece in pieces], length)
    shape = (int(rows.max()) + 1, length)
    fields = {"input_ids": np.full(shape, ids.pad, np.int32),
              "targets": np.full(shape, ids.pad, np.int32),
              "segment_ids": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32)}
    for piece, row, start in zip(pieces, rows, starts):
        span = slice(start, start + len(piece))
        fields["targets"][row, span] = piece
        fields["input_ids"][row, span] = np.concatenate([[ids.bos], piece[:-1]])
        # Pieces fill a row left to right, so the one before this ends at start - 1.
        fields["segment_ids"][row, span] = fields["segment_ids"][row, start - 1] + 1 if start else 1
        fields["positions"][row, span] = np.arange(len(piece))
    fields["loss_mask"] = (fields["segment_ids"] > 0).astype(np.int32)
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
            ids: SpecialIds) -> dict[str, np.ndarray]:
    spans = [(body, *window) for body in bodies
             for window in windows(len(body), prompt_length - 1, continuation_length)]
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
         ids: SpecialIds) -> dict[str, np.ndarray]:
    """The split's rows in `row_format` (one of FORMATS), as arrays with one row per example."""
    if row_format == "prompts":
        return prompts(bodies, *prompt_lengths(data_config), ids)
    return packed(bodies, data_config.max_length, ids)
