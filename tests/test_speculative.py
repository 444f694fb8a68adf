"""Speculative decoding: the verification step's exactness on explicit distributions, and the
whole decode against the target's own `generate` (greedy tokens, sampled distributions)."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdistill.errors import DistillError
from jaxdistill.generate import generate
from jaxdistill.models.llama import Llama
from jaxdistill.speculative import (
    acceptance_rate,
    block_efficiency,
    expected_acceptance,
    speculative_generate,
    verify,
)

# Row 2 is a one-token prompt: the draft then has no second-last token to catch up on.
PROMPTS = np.array([[5, 6, 7, 0, 0, 0, 0],
                    [1, 2, 3, 4, 5, 6, 7],
                    [9, 0, 0, 0, 0, 0, 0],
                    [9, 8, 7, 6, 5, 0, 0]], np.int32)
LENGTHS = np.array([3, 7, 1, 5], np.int32)
NEW = 10


def _lm(seed, vocab, layers, width, scale):
    """A tiny random Llama with its weights scaled: large scales keep greedy choices far from
    ties, small ones give soft distributions for sampling."""
    model = Llama(vocab_size=vocab, num_layers=layers, width=width, num_heads=4, num_kv_heads=2,
                  mlp_dim=2 * width, max_length=32)
    init = jax.jit(functools.partial(model.init, train=False))
    params = nn.unbox(init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)))
    return model, jax.tree.map(lambda p: scale * p, params)


@pytest.fixture(scope="module")
def sharp_pair():
    """A target and a smaller, unrelated draft, both far from ties (vocabulary 32)."""
    return _lm(0, 32, 2, 32, 30.0), _lm(1, 32, 1, 16, 30.0)


@pytest.fixture(scope="module")
def soft_pair():
    """A target and a draft over 8 tokens whose distributions overlap by about 0.55."""
    return _lm(0, 8, 2, 32, 3.0), _lm(1, 8, 1, 16, 3.0)


def _chisquare_pvalue(samples, probs):
    """Goodness of fit of integer samples to `probs`, cells expecting < 5 pooled into one."""
    probs = np.asarray(probs, np.float64).ravel()
    observed = np.bincount(np.asarray(samples).ravel(), minlength=probs.size)
    expected = probs / probs.sum() * observed.sum()
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return stats.chisquare(observed[keep], expected[keep]).pvalue


# --- verify on explicit distributions ---------------------------------------------------------

V, GAMMA, DRAWS = 6, 3, 200_000


def _tables(seed, rows):
    """`rows` random distributions over V tokens, some sharp and some flat."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(V, 0.7), size=rows).astype(np.float32)


@pytest.fixture(scope="module")
def independent_positions():
    """verify on DRAWS copies of fixed p (γ+1 positions) and q (γ): the emitted tokens."""
    target, draft = _tables(0, GAMMA + 1), _tables(1, GAMMA)
    draft_rng, verify_rng = jax.random.split(jax.random.key(0))
    draft_tokens = jax.random.categorical(draft_rng, jnp.log(draft), shape=(DRAWS, GAMMA))
    num_accepted, next_token = jax.jit(verify)(
        jnp.broadcast_to(target, (DRAWS, GAMMA + 1, V)),
        jnp.broadcast_to(draft, (DRAWS, GAMMA, V)), draft_tokens, verify_rng)
    emitted = np.where(np.arange(GAMMA + 1) < np.asarray(num_accepted)[:, None],
                       np.pad(np.asarray(draft_tokens), ((0, 0), (0, 1))),
                       np.asarray(next_token)[:, None])
    return target, draft, np.asarray(num_accepted), emitted


@pytest.mark.parametrize("position", range(GAMMA + 1))
def test_each_emitted_token_is_distributed_as_the_target(independent_positions, position):
    """Position 0 is the first token, position γ the bonus token; the positions' tables are
    independent, so the token at i (emitted when k ≥ i) follows p_i."""
    target, _, num_accepted, emitted = independent_positions
    reached = num_accepted >= position
    assert reached.sum() > 10_000
    assert _chisquare_pvalue(emitted[reached, position], target[position]) > 1e-3


def test_acceptance_counts_follow_sum_of_min(independent_positions):
    """P(k ≥ i) = Π_{j<i} Σ min(p_j, q_j), the first factor being the acceptance rate."""
    target, draft, num_accepted, _ = independent_positions
    beta = np.asarray(expected_acceptance(target[:GAMMA], draft))
    np.testing.assert_allclose(beta, np.minimum(target[:GAMMA], draft).sum(-1), rtol=1e-6)
    reach = np.append(1.0, np.cumprod(beta))  # P(k ≥ i), i = 0..γ
    probs = reach - np.append(reach[1:], 0.0)  # P(k = i)
    assert _chisquare_pvalue(num_accepted, probs) > 1e-3
    sigma = np.sqrt(beta[0] * (1 - beta[0]) / DRAWS)
    assert abs(np.mean(num_accepted >= 1) - beta[0]) < 4 * sigma


def test_point_masses_accept_exactly_the_argmax():
    """Temperature 0 in verify's terms: accept while the draft's token is the target's argmax,
    then emit the target's argmax."""
    one_hot = functools.partial(jax.nn.one_hot, num_classes=V)
    target_tokens = jnp.array([[1, 2, 3], [1, 2, 3], [4, 4, 4]])
    draft_tokens = jnp.array([[1, 2], [1, 5], [0, 4]])
    num_accepted, next_token = verify(one_hot(target_tokens), one_hot(draft_tokens),
                                      draft_tokens, jax.random.key(0))
    np.testing.assert_array_equal(num_accepted, [2, 1, 0])
    np.testing.assert_array_equal(next_token, [3, 2, 4])


def _markov_round(target, draft, context, gamma, rng):
    """One speculative round for first-order Markov "models" given as tables [V + 1, V] (row V
    is the start of the sequence): the γ + 1 tokens, of which the first k + 1 are emitted."""
    draft_rng, verify_rng = jax.random.split(rng)
    tokens, previous = [], context
    for key in jax.random.split(draft_rng, gamma):
        previous = jax.random.categorical(key, jnp.log(draft[previous]))
        tokens.append(previous)
    draft_tokens = jnp.stack(tokens, axis=1)
    contexts = jnp.concatenate([context[:, None], draft_tokens], axis=1)
    num_accepted, next_token = verify(target[contexts], draft[contexts[:, :-1]], draft_tokens,
                                      verify_rng)
    emitted = jnp.where(jnp.arange(gamma + 1) < num_accepted[:, None],
                        jnp.pad(draft_tokens, ((0, 0), (0, 1))), next_token[:, None])
    return emitted, num_accepted


def test_two_token_sequences_follow_the_target_chain():
    """With γ = 2 over conditional tables, the first two tokens, wherever the round boundary
    falls between them, are jointly distributed as p(x1) p(x2 | x1)."""
    target, draft = _tables(2, V + 1), _tables(3, V + 1)
    start = jnp.full((DRAWS,), V)  # every row begins at the start row of the tables
    first_rng, second_rng = jax.random.split(jax.random.key(1))
    emitted, num_accepted = _markov_round(target, draft, start, 2, first_rng)
    # Rows that emitted one token (a rejection at once) need a second round after it.
    again, _ = _markov_round(target, draft, emitted[:, 0], 2, second_rng)
    second = jnp.where(num_accepted >= 1, emitted[:, 1], again[:, 0])
    assert 0.1 < float(jnp.mean(num_accepted == 0)) < 0.9  # both paths are exercised
    joint = target[V][:, None] * target[:V]
    pairs = np.asarray(emitted[:, 0]) * V + np.asarray(second)
    assert _chisquare_pvalue(pairs, joint) > 1e-3


# --- the whole decode with Llama models -------------------------------------------------------

@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_equals_the_targets_greedy_decode(sharp_pair, gamma):
    (target, target_params), (draft, draft_params) = sharp_pair
    expected = generate(target, target_params, PROMPTS, LENGTHS, max_new_tokens=NEW,
                        rng=jax.random.key(0), temperature=0.0)
    out = speculative_generate(target, target_params, draft, draft_params, PROMPTS, LENGTHS,
                               max_new_tokens=NEW, gamma=gamma, rng=jax.random.key(0),
                               temperature=0.0)
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    assert bool(out.mask.all())
    # An unrelated draft is nearly always wrong, so each round yields about one token.
    assert int(out.num_rounds.max()) <= NEW and float(block_efficiency(out)) < 1.5


@pytest.mark.parametrize("gamma, temperature", [(1, 0.0), (3, 0.0), (3, 1.0)])
def test_the_target_as_its_own_draft_accepts_everything(sharp_pair, gamma, temperature):
    (target, target_params), _ = sharp_pair
    out = speculative_generate(target, target_params, target, target_params, PROMPTS, LENGTHS,
                               max_new_tokens=NEW, gamma=gamma, rng=jax.random.key(0),
                               temperature=temperature)
    # The counts include the whole last round, which NEW may cut short.
    np.testing.assert_array_equal(out.num_rounds, -(-NEW // (gamma + 1)))
    np.testing.assert_array_equal(out.num_accepted, gamma * out.num_rounds)
    np.testing.assert_array_equal(out.num_rejected, 0)
    assert float(acceptance_rate(out)) == 1.0 and float(block_efficiency(out)) == gamma + 1


def test_eos_ends_each_row_and_masks_the_rest(sharp_pair):
    (target, target_params), (draft, draft_params) = sharp_pair
    free = np.asarray(generate(target, target_params, PROMPTS, LENGTHS, max_new_tokens=NEW,
                               rng=jax.random.key(0), temperature=0.0).tokens)
    eos = int(free[0, 2])
    out = speculative_generate(target, target_params, draft, draft_params, PROMPTS, LENGTHS,
                               max_new_tokens=NEW, gamma=2, rng=jax.random.key(0),
                               temperature=0.0, eos_id=eos, pad_id=31)
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free[row] == eos)
        end = hits[0] + 1 if hits.size else NEW
        np.testing.assert_array_equal(out.mask[row], np.arange(NEW) < end)
        np.testing.assert_array_equal(out.tokens[row, :end], free[row, :end])
        assert (np.asarray(out.tokens[row, end:]) == 31).all()
    assert int(out.num_rounds[0]) <= 3  # row 0 stopped at its EOS, the third token


def test_temperature_does_not_recompile_and_vocabularies_must_match(sharp_pair, soft_pair):
    (target, target_params), (draft, draft_params) = sharp_pair
    run = functools.partial(speculative_generate, target, target_params, draft, draft_params,
                            PROMPTS, LENGTHS, max_new_tokens=NEW, gamma=3)
    run(rng=jax.random.key(0), temperature=1.0)
    compiled = speculative_generate._cache_size()
    run(rng=jax.random.key(1), temperature=0.5)
    assert speculative_generate._cache_size() == compiled
    small, small_params = soft_pair[1]
    with pytest.raises(DistillError, match="vocabulary"):
        speculative_generate(target, target_params, small, small_params, PROMPTS, LENGTHS,
                             max_new_tokens=NEW, gamma=3, rng=jax.random.key(0))


SAMPLE_PROMPTS = np.array([[3, 1, 4, 1, 5], [2, 7, 0, 0, 0]], np.int32)
SAMPLE_LENGTHS = np.array([5, 2], np.int32)
ROWS_PER_PROMPT, SAMPLE_NEW = 6000, 3


@functools.partial(jax.jit, static_argnames="model")
def _logits(model, params, ids):
    return model.apply(params, ids, train=False)


def _exact_continuations(model, params, prompt, new, temperature):
    """p(x1, ..., x_new | prompt) for every continuation, as an array [V] * new. Right-padding
    to the widest prompt keeps one compilation; causality hides the padding."""
    vocab = model.vocab_size
    continuations = np.array(list(itertools.product(range(vocab), repeat=new)), np.int32)
    ids = np.zeros((len(continuations), SAMPLE_PROMPTS.shape[1] + new), np.int32)
    ids[:, :prompt.size] = prompt
    ids[:, prompt.size:prompt.size + new] = continuations
    logits = _logits(model, params, ids)[:, prompt.size - 1:prompt.size - 1 + new]
    logprobs = jax.nn.log_softmax(logits / temperature, axis=-1)
    chosen = jnp.take_along_axis(logprobs, continuations[..., None], axis=-1)[..., 0]
    return np.exp(np.asarray(chosen, np.float64).sum(1)).reshape((vocab,) * new)


def test_sampled_tokens_are_distributed_as_the_targets_samples(soft_pair):
    """The first three tokens (the joint of the first two, the third's marginal) of
    speculative_generate and of the target's own generate, both against the exact law, at two
    temperatures (one compilation each: the temperature is traced)."""
    (target, target_params), (draft, draft_params) = soft_pair
    prompts = np.repeat(SAMPLE_PROMPTS, ROWS_PER_PROMPT, axis=0)
    lengths = np.repeat(SAMPLE_LENGTHS, ROWS_PER_PROMPT)
    vocab = target.vocab_size
    for temperature in (1.0, 0.7):
        common = dict(max_new_tokens=SAMPLE_NEW, rng=jax.random.key(2), temperature=temperature)
        speculative = speculative_generate(target, target_params, draft, draft_params, prompts,
                                           lengths, gamma=2, **common)
        plain = generate(target, target_params, prompts, lengths, **common)
        assert 0.2 < float(acceptance_rate(speculative)) < 0.9  # rejections and bonus tokens
        for row, (prompt, length) in enumerate(zip(SAMPLE_PROMPTS, SAMPLE_LENGTHS)):
            exact = _exact_continuations(target, target_params, prompt[:length], SAMPLE_NEW,
                                         temperature)
            rows = slice(row * ROWS_PER_PROMPT, (row + 1) * ROWS_PER_PROMPT)
            for out in (speculative, plain):
                tokens = np.asarray(out.tokens[rows])
                pairs = tokens[:, 0] * vocab + tokens[:, 1]
                assert _chisquare_pvalue(pairs, exact.sum(2)) > 1e-3
                assert _chisquare_pvalue(tokens[:, 2], exact.sum((0, 1))) > 1e-3


def test_measured_acceptance_matches_sum_of_min_along_the_samples(soft_pair):
    """acceptance_rate counts Bernoulli(Σ min(p, q)) outcomes at the verified positions;
    Σ min(p, q) averaged over every generated position (teacher-forced) estimates the same
    mean. About 2,500 verifications give a standard error near 0.01; bonus positions and the
    overshoot of the last round shift the two means by less than that, so 0.03 is ample."""
    (target, target_params), (draft, draft_params) = soft_pair
    rows, new, prompt_length = 192, 16, 4
    prompts = np.asarray(jax.random.randint(jax.random.key(3), (rows, prompt_length), 0, 8))
    out = speculative_generate(target, target_params, draft, draft_params, prompts,
                               np.full(rows, prompt_length, np.int32), max_new_tokens=new,
                               gamma=3, rng=jax.random.key(4))
    sequences = np.concatenate([prompts, np.asarray(out.tokens)], axis=1)[:, :-1]
    p, q = (jax.nn.softmax(_logits(model, params, sequences)[:, prompt_length - 1:])
            for model, params in ((target, target_params), (draft, draft_params)))
    expected = float(jnp.mean(expected_acceptance(p, q)))
    verified = int(jnp.sum(out.num_accepted + out.num_rejected))
    assert verified > 2000
    assert abs(float(acceptance_rate(out)) - expected) < 0.03, (acceptance_rate(out), expected)
