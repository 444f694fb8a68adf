"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) and the measures DistillSpec
(Zhou et al. 2024) reports for a draft model, as one jitted program.

    out = speculative_generate(target, target_params, draft, draft_params, prompts, lengths,
                               max_new_tokens=64, gamma=4, rng=rng, temperature=1.0)
    acceptance_rate(out), block_efficiency(out)

Each round the draft proposes γ tokens one at a time, the target scores all γ + 1 positions in
one forward pass, and `verify` keeps the longest prefix that rejection sampling accepts plus one
token from the target's residual (or a bonus token when all γ pass): the output is distributed
exactly as the target's own samples (greedy at temperature 0).

Rows of a batch accept different numbers of tokens, while a `KVCache` writes every row at one
shared slot. So each round's block is written at the shared slot and then moved, per row, to
where that row's sequence ends; a row's cache is always a prefix of visible slots (segment 1)
followed by stale ones (segment 0, never attended), the shared index is the longest prefix, and
positions are passed explicitly. Rejected tokens are thus overwritten in place, and a cache needs
only prompt + max_new_tokens + γ slots.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxdistill.errors import DistillError
from jaxdistill.generate import filter_logits, is_eos, until_eos
from jaxdistill.models.llama import KVCache, Llama


class SpeculativeOutput(NamedTuple):
    tokens: Int[Array, "batch new"]   # pad_id after the first EOS
    mask: Bool[Array, "batch new"]    # True up to and including the first EOS
    num_rounds: Int[Array, "batch"]   # target calls until the row finished
    num_accepted: Int[Array, "batch"]  # draft tokens the target accepted
    num_rejected: Int[Array, "batch"]  # rounds that ended at a rejected draft token


def sampling_probs(logits: Float[Array, "*batch vocab"],
                   temperature: float | Array) -> Float[Array, "*batch vocab"]:
    """The distribution tokens are drawn from: softmax(logits / T), or the argmax's point mass
    at T = 0, so that greedy decoding is the same rejection sampling on one-hot distributions."""
    greedy = temperature <= 0
    probs = jax.nn.softmax(filter_logits(logits, jnp.where(greedy, 1.0, temperature)), axis=-1)
    argmax = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=probs.dtype)
    return jnp.where(greedy, argmax, probs)


def verify(target_probs: Float[Array, "batch gamma_plus_1 vocab"],
           draft_probs: Float[Array, "batch gamma vocab"],
           draft_tokens: Int[Array, "batch gamma"],
           rng: Array) -> tuple[Int[Array, "batch"], Int[Array, "batch"]]:
    """One verification step: how many draft tokens are accepted, and the token that follows.

    Draft token i (drawn from q_i) is accepted with probability min(1, p_i(x) / q_i(x)) while all
    before it were; the next token comes from norm(max(0, p_k − q_k)) at the first rejection k,
    or from p_γ (the bonus token) when all γ pass. The emitted tokens are then distributed as p.
    """
    accept_rng, sample_rng = jax.random.split(rng)
    p_of_draft, q_of_draft = (jnp.take_along_axis(probs, draft_tokens[..., None], axis=-1)[..., 0]
                              for probs in (target_probs[:, :-1], draft_probs))
    # u < p/q written without the division, so q = 0 needs no special case.
    uniform = jax.random.uniform(accept_rng, draft_tokens.shape)
    accepted = uniform * q_of_draft < p_of_draft
    num_accepted = jnp.sum(jnp.cumprod(accepted, axis=1), axis=1)
    # A zero draft distribution after the last position makes the residual there p itself.
    padded_draft = jnp.pad(draft_probs, ((0, 0), (0, 1), (0, 0)))
    p, q = (jnp.take_along_axis(probs, num_accepted[:, None, None], axis=1)[:, 0]
            for probs in (target_probs, padded_draft))
    residual = jnp.maximum(p - q, 0.0)
    # Rounding can leave no residual mass where p ≈ q; a rejection is then (nearly) impossible,
    # and p is the limit of the residual's distribution anyway.
    residual = jnp.where(jnp.sum(residual, axis=-1, keepdims=True) > 0, residual, p)
    return num_accepted, jax.random.categorical(sample_rng, jnp.log(residual), axis=-1)


def expected_acceptance(target_probs: Float[Array, "*batch vocab"],
                        draft_probs: Float[Array, "*batch vocab"]) -> Float[Array, "*batch"]:
    """Σ min(p, q) = 1 − TVD(p, q): the probability that a draft token is accepted."""
    return jnp.sum(jnp.minimum(target_probs, draft_probs), axis=-1)


def acceptance_rate(out: SpeculativeOutput) -> Array:
    """Accepted draft tokens per draft token the target verified: an estimate of the expected
    Σ min(p, q) over the decoded contexts (DistillSpec's α). Tokens proposed after a rejection are
    never verified; counting them (accepted / γ·rounds) would bias α down for γ > 1."""
    return jnp.sum(out.num_accepted) / jnp.sum(out.num_accepted + out.num_rejected)


def block_efficiency(out: SpeculativeOutput) -> Array:
    """Tokens generated per target call (DistillSpec's τ): accepted draft tokens + 1 per round,
    counting the last round in full even where max_new_tokens cut it short."""
    return jnp.sum(out.num_accepted + out.num_rounds) / jnp.sum(out.num_rounds)


class _Decoding(NamedTuple):
    """The loop's carry. A row's sequence holds its prompt and the tokens so far (`lengths` of
    them); the target's cache holds all but the last token, the draft's all but the last two."""

    sequence: Int[Array, "batch slots"]
    lengths: Int[Array, "batch"]
    done: Bool[Array, "batch"]
    target_cache: KVCache
    draft_cache: KVCache
    num_rounds: Int[Array, "batch"]
    num_accepted: Int[Array, "batch"]
    num_rejected: Int[Array, "batch"]
    round_index: Int[Array, ""]


def _scatter_rows(array: Array, starts: Int[Array, "batch"], values: Array,
                  keep: Bool[Array, "batch"]) -> Array:
    """array[b, starts[b] + j] = values[b, j] for each row b with keep[b] and slot ≥ 0."""
    slots = starts[:, None] + jnp.arange(values.shape[1])
    slots = jnp.where(keep[:, None] & (slots >= 0), slots, array.shape[1])  # dropped below
    rows = jnp.arange(array.shape[0])[:, None]
    return array.at[rows, slots].set(values.astype(array.dtype), mode="drop")


def _show_prefix(cache: KVCache, visible: Int[Array, "batch"]) -> KVCache:
    """Each row attends to its first `visible` slots; the next block goes after the longest."""
    slots = jnp.arange(cache.segment_ids.shape[1])
    segment_ids = (slots < visible[:, None]).astype(jnp.int32)
    return cache._replace(segment_ids=segment_ids, index=jnp.maximum(jnp.max(visible), 0))


def _commit_block(cache: KVCache, size: int, starts: Int[Array, "batch"],
                  visible: Int[Array, "batch"]) -> KVCache:
    """Moves the `size` slots written last (at the shared index) to each row's `starts`, where
    they overwrite that row's stale slots, then shows each row its first `visible` slots."""
    block_slot = cache.index - size

    def move(kv):
        block = jax.lax.dynamic_slice_in_dim(kv, block_slot, size, axis=1)
        return _scatter_rows(kv, starts, block, jnp.ones(starts.shape, bool))

    moved = cache._replace(keys=tuple(map(move, cache.keys)),
                           values=tuple(map(move, cache.values)))
    return _show_prefix(moved, visible)


def _check(target: Llama, draft: Llama, max_new_tokens: int, gamma: int) -> None:
    if target.vocab_size != draft.vocab_size:
        raise DistillError(f"the draft's vocabulary ({draft.vocab_size}) differs from the"
                           f" target's ({target.vocab_size}); pad or slice one to match")
    if gamma < 1 or max_new_tokens < 1:
        raise DistillError(f"gamma ({gamma}) and max_new_tokens ({max_new_tokens}) must be ≥ 1")


@functools.partial(jax.jit, static_argnames=("target_model", "draft_model", "max_new_tokens",
                                             "gamma", "eos_id", "pad_id"))
def speculative_generate(target_model: Llama, target_params: dict, draft_model: Llama,
                         draft_params: dict, prompts: Int[Array, "batch prompt"],
                         prompt_lengths: Int[Array, "batch"], *, max_new_tokens: int,
                         gamma: int, rng: Array, temperature: float | Array = 1.0,
                         eos_id: int | tuple[int, ...] | None = None,
                         pad_id: int = 0) -> SpeculativeOutput:
    """Samples `max_new_tokens` tokens after each prompt from the target, with the draft
    proposing `gamma` tokens per target call.

    Arguments are as `generate.generate`'s: params as `model.apply` takes them, row i's prompt
    `prompts[i, :prompt_lengths[i]]` (right-padded, at least one token), `temperature` traced.
    Both models sample at `temperature`. A row stops at its EOS or after `max_new_tokens`
    tokens (the last round cut short); rounds go on until every row has stopped.
    """
    _check(target_model, draft_model, max_new_tokens, gamma)
    batch, prompt_length = prompts.shape
    slots = prompt_length + max_new_tokens + gamma  # see the module docstring
    final_lengths = prompt_lengths + max_new_tokens

    def apply(model, params, tokens, positions, cache, attention_mask=None):
        return model.apply(params, tokens, attention_mask, train=False, positions=positions,
                           cache=cache)

    def prefill(model, params, lag):
        positions = jnp.broadcast_to(jnp.arange(prompt_length), prompts.shape)
        _, cache = apply(model, params, prompts, positions, model.init_cache(batch, slots),
                         positions < prompt_lengths[:, None])
        return _show_prefix(cache, prompt_lengths - lag)

    def propose(state, rng):
        """γ draft tokens and their distributions; the draft first catches up on the two last
        tokens (the second-last is missing from its cache when the last round accepted all)."""
        def sample(logits, i):
            probs = sampling_probs(logits, temperature)
            return jax.random.categorical(jax.random.fold_in(rng, i), jnp.log(probs)), probs

        pair = state.lengths[:, None] + jnp.array([-2, -1])
        pair_tokens = jnp.take_along_axis(state.sequence, jnp.maximum(pair, 0), axis=1)
        logits, cache = apply(draft_model, draft_params, pair_tokens, jnp.maximum(pair, 0),
                              state.draft_cache, pair >= 0)  # nothing before a 1-token prompt
        logits = logits[:, -1]

        def step(carry, i):
            logits, cache = carry
            token, probs = sample(logits, i)
            logits, cache = apply(draft_model, draft_params, token[:, None],
                                  (state.lengths + i)[:, None], cache)
            return (logits[:, -1], cache), (token, probs)

        (logits, cache), (tokens, probs) = jax.lax.scan(step, (logits, cache),
                                                        jnp.arange(gamma - 1))
        last_token, last_probs = sample(logits, gamma - 1)
        tokens = jnp.concatenate([tokens.T, last_token[:, None]], axis=1)
        probs = jnp.concatenate([probs.transpose(1, 0, 2), last_probs[:, None]], axis=1)
        return tokens, probs, cache

    def score(state, draft_tokens):
        """The target's distributions after the last token and after each draft token."""
        last = jnp.take_along_axis(state.sequence, state.lengths[:, None] - 1, axis=1)
        positions = state.lengths[:, None] - 1 + jnp.arange(gamma + 1)
        logits, cache = apply(target_model, target_params,
                              jnp.concatenate([last, draft_tokens], axis=1), positions,
                              state.target_cache)
        return sampling_probs(logits, temperature), cache

    def decode_round(state):
        draft_rng, verify_rng = jax.random.split(jax.random.fold_in(rng, state.round_index))
        draft_tokens, draft_probs, draft_cache = propose(state, draft_rng)
        target_probs, target_cache = score(state, draft_tokens)
        num_accepted, next_token = verify(target_probs, draft_probs, draft_tokens, verify_rng)
        # The accepted draft tokens, then the verified token; what follows it is overwritten.
        block = jnp.where(jnp.arange(gamma + 1) < num_accepted[:, None],
                          jnp.pad(draft_tokens, ((0, 0), (0, 1))), next_token[:, None])
        active = ~state.done
        sequence = _scatter_rows(state.sequence, state.lengths, block, active)
        lengths = jnp.where(active, jnp.minimum(state.lengths + num_accepted + 1, final_lengths),
                            state.lengths)
        new = jnp.arange(gamma + 1) < (lengths - state.lengths)[:, None]
        saw_eos = jnp.zeros_like(active) if eos_id is None else jnp.any(
            new & is_eos(block, eos_id), axis=1)
        return _Decoding(
            sequence, lengths, state.done | saw_eos | (lengths >= final_lengths),
            _commit_block(target_cache, gamma + 1, state.lengths - 1, lengths - 1),
            _commit_block(draft_cache, gamma + 1, state.lengths - 2, lengths - 2),
            state.num_rounds + active, state.num_accepted + jnp.where(active, num_accepted, 0),
            state.num_rejected + (active & (num_accepted < gamma)), state.round_index + 1)

    sequence = jnp.pad(prompts, ((0, 0), (0, slots - prompt_length)), constant_values=pad_id)
    zeros = jnp.zeros((batch,), jnp.int32)
    start = _Decoding(sequence, prompt_lengths, jnp.zeros((batch,), bool),
                      prefill(target_model, target_params, 1),
                      prefill(draft_model, draft_params, 2), zeros, zeros, zeros,
                      jnp.zeros((), jnp.int32))
    end = jax.lax.while_loop(lambda state: ~jnp.all(state.done), decode_round, start)
    new_tokens = jnp.take_along_axis(
        end.sequence, prompt_lengths[:, None] + jnp.arange(max_new_tokens), axis=1)
    mask = until_eos(new_tokens, eos_id)
    return SpeculativeOutput(jnp.where(mask, new_tokens, pad_id), mask, end.num_rounds,
                             end.num_accepted, end.num_rejected)
