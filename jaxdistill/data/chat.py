"""Chat conversations as text and tokens, exactly as `transformers` renders them.

`render` is the tokenizer's own `apply_chat_template(messages, tokenize=False,
add_generation_prompt=...)` with one-line errors. `tokenize` gives the same token ids as
`apply_chat_template(..., tokenize=True)` and marks the tokens of the assistant's replies (what a
loss on assistant turns only trains on). A template with `{% generation %}` blocks marks them
itself, through transformers' `return_assistant_tokens_mask`; published templates mostly have
none, so otherwise a reply is the text that rendering the conversation through it adds to
rendering the turns before it with the generation prompt: the reply and the template's
end-of-turn tokens after it. Either way a token is the assistant's when its characters overlap a
reply, as transformers decides.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jinja2
from transformers import PreTrainedTokenizerFast

from jaxdistill.errors import DistillError

Message = Mapping[str, Any]  # {"role": "system" | "user" | "assistant", "content": str}

# How transformers itself tells a template that marks the assistant's tokens.
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _template(tokenizer: PreTrainedTokenizerFast) -> str:
    if not tokenizer.chat_template:
        raise DistillError(f"the {tokenizer.name_or_path or 'byte/bpe'} tokenizer has no chat"
                           " template; use a chat model's tokenizer (its tokenizer_config.json"
                           " or chat_template.jinja holds one)")
    return tokenizer.get_chat_template()


def _failing_turn(tokenizer: PreTrainedTokenizerFast, messages: Sequence[Message]) -> int:
    """The first turn that the conversation cannot be rendered through."""
    for turn in range(len(messages)):
        try:
            tokenizer.apply_chat_template(list(messages[:turn + 1]), tokenize=False)
        except jinja2.TemplateError:
            return turn
    return len(messages) - 1


def _apply(tokenizer: PreTrainedTokenizerFast, messages: Sequence[Message], **options):
    """`tokenizer.apply_chat_template(messages, **options)`, failing in one line."""
    _template(tokenizer)
    try:
        return tokenizer.apply_chat_template(list(messages), **options)
    except jinja2.TemplateError as error:
        turn = _failing_turn(tokenizer, messages)
        reason = " ".join(str(error).split())
        raise DistillError(
            f"the chat template cannot render turn {turn} ({messages[turn].get('role')!r}) of the"
            f" conversation: {reason}; give the turns in the order and roles the template"
            " accepts") from None


def render(tokenizer: PreTrainedTokenizerFast, messages: Sequence[Message],
           add_generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it."""
    return _apply(tokenizer, messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _reply_spans(tokenizer: PreTrainedTokenizerFast, messages: Sequence[Message],
                 text: str) -> list[tuple[int, int]]:
    """Where each assistant reply lies in `text`, the whole conversation rendered."""
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if turn == 0:
            raise DistillError("the conversation starts with an assistant turn, which has no"
                               " prompt to follow; start it with a system or user turn")
        before = render(tokenizer, messages[:turn], add_generation_prompt=True)
        through = render(tokenizer, messages[:turn + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise DistillError(
                f"the chat template renders turn {turn} differently once other turns follow, so"
                " its reply cannot be told from its prompt; add {% generation %} blocks around"
                " the assistant's replies in the template")
        spans.append((len(before), len(through)))
    return spans


def tokenize(tokenizer: PreTrainedTokenizerFast, messages: Sequence[Message],
             add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """The conversation's token ids, as `apply_chat_template(..., tokenize=True)` gives them, and
    beside them 1 for each token of an assistant reply, 0 for every other."""
    if GENERATION_BLOCK.search(_template(tokenizer)):
        encoded = _apply(tokenizer, messages, add_generation_prompt=add_generation_prompt,
                         return_dict=True, return_assistant_tokens_mask=True)
        return encoded["input_ids"], encoded["assistant_masks"]
    text = render(tokenizer, messages, add_generation_prompt)
    spans = _reply_spans(tokenizer, messages, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start < span_end and end > span_start for span_start, span_end in spans))
            for start, end in encoded["offset_mapping"]]
    return encoded["input_ids"], mask
