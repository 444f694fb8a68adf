"""Sampling from a causal LM with a KV cache, as one jitted program.

    out = generate(model, params, prompts, prompt_lengths, max_new_tokens=64, rng=rng,
                   temperature=1.0, top_p=0.95, eos_id=2)    # or eos_id=(128001, 128009)

Prompts of different lengths are shifted right so that they all end at the same slot (left
padding); every row then decodes into the same cache slot at each step, with its own positions,
so a padded batch generates exactly what each prompt would alone. This sampling temperature is
not the distillation loss's temperature (config.loss.temperature). Sliding-window layers need
nothing special: the cache keeps every slot and the model masks what a window hides.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxdistill.models.llama import Llama, logits_from_hidden


class GenerateOutput(NamedTuple):
    tokens: Int[Array, "batch new"]       # pad_id after the first end token
    mask: Bool[Array, "batch new"]        # True up to and including the first end token
    logprobs: Float[Array, "batch new"]   # under the sampling distribution; 0 where masked


def filter_logits(logits: Float[Array, "*batch vocab"], temperature: float | Array,
                  top_k: int = 0, top_p: float = 1.0) -> Float[Array, "*batch vocab"]:
    """The sampling distribution's logits: float32, divided by the temperature, -inf outside
    the top-k tokens and outside the smallest set whose probability reaches top_p (applied in
    that order, as Hugging Face does). Ties at a cut-off stay in the support."""
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p < 1.0:
        descending = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < top_p, descending, jnp.inf), axis=-1,
                         keepdims=True)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return logits


def sample_logits(logits: Float[Array, "batch vocab"], rng: Array,
                  temperature: float | Array = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> tuple[Int[Array, "batch"], Float[Array, "batch"]]:
    """Tokens drawn from `filter_logits` and their log-probabilities under it.

    Temperature 0 is greedy decoding: the argmax, with log-probability 0 (a point mass)."""
    greedy = temperature <= 0
    filtered = filter_logits(logits, jnp.where(greedy, 1.0, temperature), top_k, top_p)
    sampled = jax.random.categorical(rng, filtered, axis=-1)
    tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(filtered, axis=-1), tokens[:, None],
                                   axis=-1)[:, 0]
    return tokens, jnp.where(greedy, 0.0, logprobs)


def left_pad(prompts: Int[Array, "batch prompt"], lengths: Int[Array, "batch"],
             pad_id: int) -> tuple[Int[Array, "batch prompt"], Bool[Array, "batch prompt"]]:
    """Right-padded prompts shifted to end at the last slot, and which slots hold a token."""
    index = jnp.arange(prompts.shape[1]) - (prompts.shape[1] - lengths[:, None])
    valid = index >= 0
    shifted = jnp.take_along_axis(prompts, jnp.maximum(index, 0), axis=1)
    return jnp.where(valid, shifted, pad_id), valid


def right_pad(prompts: Int[Array, "batch prompt"], prompt_mask: Array
              ) -> tuple[Int[Array, "batch prompt"], Int[Array, "batch"]]:
    """Left-padded prompts (as the prompts data format stores them) as `generate` takes them:
    right-padded, with their lengths."""
    lengths = prompt_mask.sum(-1).astype(jnp.int32)
    slots = prompts.shape[1]
    index = (jnp.arange(slots) + (slots - lengths)[:, None]) % slots
    return jnp.take_along_axis(prompts, index, axis=1), lengths


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k", "top_p",
                                             "eos_id", "pad_id"))
def generate(model: Llama, params: dict, prompts: Int[Array, "batch prompt"],
             prompt_lengths: Int[Array, "batch"], *, max_new_tokens: int, rng: Array,
             temperature: float | Array = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: int | tuple[int, ...] | None = None, pad_id: int = 0) -> GenerateOutput:
    """Samples `max_new_tokens` tokens after each prompt.

    `params` is what `model.apply` takes ({"params": ...}); row i's prompt is
    `prompts[i, :prompt_lengths[i]]` (right-padded, at least one token). The whole call is
    jitted; `temperature` may vary without recompiling, the static arguments may not. A row
    ends at the first of the `eos_id` tokens (an int, or a tuple of ints such as
    `pretrained.eos_ids(path)`; hashable, as a static argument must be). Decoding runs all
    `max_new_tokens` steps; tokens after a row's end are masked out, not computed less.
    """
    batch, prompt_length = prompts.shape
    tokens, valid = left_pad(prompts, prompt_lengths, pad_id)
    cache = model.init_cache(batch, prompt_length + max_new_tokens)
    head = model.output_head(params)

    def forward(tokens, attention_mask, cache):
        # The model's default positions count from each row's first real token.
        hidden, cache = model.apply(params, tokens, attention_mask, train=False, cache=cache,
                                    method="hidden")
        return logits_from_hidden(hidden[:, -1], head, model.final_softcap), cache

    def sample(logits, step):
        return sample_logits(logits, jax.random.fold_in(rng, step), temperature, top_k, top_p)

    logits, cache = forward(tokens, valid, cache)
    first = sample(logits, 0)

    def step(carry, t):
        cache, token = carry
        logits, cache = forward(token[:, None], None, cache)
        token, logprob = sample(logits, t)
        return (cache, token), (token, logprob)

    _, rest = jax.lax.scan(step, (cache, first[0]), jnp.arange(1, max_new_tokens))
    new_tokens, logprobs = (jnp.concatenate([f[:, None], r.T], axis=1) for f, r in zip(first, rest))
    mask = until_eos(new_tokens, eos_id)
    return GenerateOutput(jnp.where(mask, new_tokens, pad_id), mask, jnp.where(mask, logprobs, 0.0))


def is_eos(tokens: Int[Array, "*shape"], eos_id: int | tuple[int, ...]) -> Bool[Array, "*shape"]:
    """Where `tokens` is an end token: `eos_id` itself, or any id of a tuple."""
    ids = jnp.asarray(eos_id, tokens.dtype).reshape(-1)
    return jnp.any(tokens[..., None] == ids, axis=-1)


def until_eos(tokens: Int[Array, "batch new"],
              eos_id: int | tuple[int, ...] | None) -> Bool[Array, "batch new"]:
    """True up to and including each row's first end token (everywhere without end ids)."""
    if eos_id is None:
        return jnp.ones(tokens.shape, bool)
    ends = is_eos(tokens, eos_id)
    return jnp.cumsum(ends, axis=1) - ends == 0
