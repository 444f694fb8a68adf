"""KV-cache generation: padded batches, EOS masking, and the sampling distribution."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdistill.generate import filter_logits, generate, sample_logits, until_eos
from jaxdistill.models.llama import Llama

PROMPTS = np.array([[5, 6, 7, 0, 0, 0, 0],
                    [1, 2, 3, 4, 5, 6, 7],
                    [9, 8, 7, 6, 5, 0, 0]], np.int32)
LENGTHS = np.array([3, 7, 5], np.int32)
NEW = 6


@pytest.fixture(scope="module")
def lm():
    """A tiny LM with weights scaled up so that its greedy choices are far from ties."""
    model = Llama(vocab_size=32, num_layers=2, width=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                  max_length=32)
    init = jax.jit(functools.partial(model.init, train=False))
    params = nn.unbox(init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    return model, jax.tree.map(lambda p: 30.0 * p, params)


@functools.partial(jax.jit, static_argnames="model")
def _forward(model, params, ids):
    return model.apply(params, ids, train=False)


def _next_token_logits(model, params, prompt, new_tokens):
    """The reference without a cache: a full forward over prompt + new tokens, alone in its
    row. Right-padding to a fixed width keeps one compilation; causality hides the padding."""
    sequence = np.concatenate([prompt, new_tokens])
    row = np.zeros((1, PROMPTS.shape[1] + NEW), np.int32)
    row[0, :sequence.size] = sequence
    logits = _forward(model, params, row)[0]
    return logits[len(prompt) - 1:sequence.size - 1]  # the logits each new token was drawn from


def test_greedy_padded_batch_equals_each_prompt_alone(lm):
    model, params = lm
    batch = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=NEW,
                     rng=jax.random.key(0), temperature=0.0)
    assert batch.tokens.shape == (3, NEW) and bool(batch.mask.all())
    np.testing.assert_array_equal(batch.logprobs, 0.0)  # greedy is a point mass
    for row, length in enumerate(LENGTHS):
        logits = _next_token_logits(model, params, PROMPTS[row, :length], batch.tokens[row])
        np.testing.assert_array_equal(batch.tokens[row], jnp.argmax(logits, axis=-1))
    alone = generate(model, params, PROMPTS[:1, :LENGTHS[0]], LENGTHS[:1], max_new_tokens=NEW,
                     rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(batch.tokens[0], alone.tokens[0])


def test_eos_ends_each_row_and_masks_the_rest(lm):
    model, params = lm
    free = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=NEW,
                    rng=jax.random.key(0), temperature=0.0)
    eos = int(free.tokens[0, 2])
    out = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=NEW,
                   rng=jax.random.key(0), temperature=0.0, eos_id=eos, pad_id=31)
    for row in range(3):
        hits = np.flatnonzero(np.asarray(free.tokens[row]) == eos)
        end = hits[0] + 1 if hits.size else NEW
        np.testing.assert_array_equal(out.mask[row], np.arange(NEW) < end)
        np.testing.assert_array_equal(out.tokens[row, :end], free.tokens[row, :end])
        assert (np.asarray(out.tokens[row, end:]) == 31).all()
    assert not bool(out.mask[0, 3])


def test_until_eos_ends_rows_at_any_of_several_ids():
    tokens = jnp.array([[4, 9, 2, 4], [3, 3, 3, 3], [7, 5, 9, 1]])
    np.testing.assert_array_equal(until_eos(tokens, (2, 7)), [[1, 1, 1, 0], [1, 1, 1, 1],
                                                               [1, 0, 0, 0]])
    np.testing.assert_array_equal(until_eos(tokens, 9), [[1, 1, 0, 0], [1, 1, 1, 1],
                                                          [1, 1, 1, 0]])
    assert bool(until_eos(tokens, ()).all()) and bool(until_eos(tokens, None).all())


def test_sampled_logprobs_are_the_models_and_temperature_does_not_recompile(lm):
    model, params = lm
    out = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=NEW,
                   rng=jax.random.key(3), temperature=1.0)
    compiled = generate._cache_size()
    generate(model, params, PROMPTS, LENGTHS, max_new_tokens=NEW, rng=jax.random.key(4),
             temperature=0.7)
    assert generate._cache_size() == compiled
    for row, length in enumerate(LENGTHS):
        logits = _next_token_logits(model, params, PROMPTS[row, :length], out.tokens[row])
        expected = jax.nn.log_softmax(logits)[np.arange(NEW), out.tokens[row]]
        np.testing.assert_allclose(out.logprobs[row], expected, atol=1e-4)


def test_one_new_token(lm):
    model, params = lm
    out = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=1, rng=jax.random.key(0),
                   temperature=0.0)
    assert out.tokens.shape == (3, 1)


LOGITS = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))


def _draws(logits, n, seed=0, **kwargs):
    tokens, logprobs = sample_logits(jnp.broadcast_to(logits, (n, logits.shape[-1])),
                                     jax.random.key(seed), **kwargs)
    return np.asarray(tokens), np.asarray(logprobs)


@pytest.mark.parametrize("top_k, top_p, support", [
    (3, 1.0, {0, 1, 2}), (0, 0.5, {0, 1}), (0, 0.72, {0, 1, 2}), (0, 0.3, {0}),
    (2, 0.9, {0, 1}),
])
def test_top_k_and_top_p_restrict_the_support(top_k, top_p, support):
    filtered = filter_logits(LOGITS, 1.0, top_k, top_p)
    assert set(np.flatnonzero(np.isfinite(filtered))) == support
    tokens, logprobs = _draws(LOGITS, 4000, top_k=top_k, top_p=top_p)
    assert set(tokens) == support
    kept = np.exp(LOGITS)[sorted(support)].sum()
    np.testing.assert_allclose(logprobs, np.log(np.exp(LOGITS)[tokens] / kept), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sampling_matches_softmax_frequencies(temperature):
    n = 20000
    tokens, _ = _draws(LOGITS, n, seed=1, temperature=temperature)
    weights = np.exp(np.asarray(LOGITS, np.float64) / temperature)
    expected = weights / weights.sum() * n
    observed = np.bincount(tokens, minlength=LOGITS.shape[0])
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_temperature_zero_is_greedy():
    logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    tokens, logprobs = sample_logits(logits, jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(tokens, [1, 0])
    np.testing.assert_array_equal(logprobs, 0.0)
