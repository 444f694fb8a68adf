"""`divergence` against float64 NumPy references, plus its masking and error contracts."""

import functools
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import losses
from jaxdistill.errors import DistillError


def _softmax64(logits, temperature):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _kl64(a, b):
    return np.sum(np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0), -1)


def reference(student, teacher, kind, temperature, beta, alpha, mask):
    q, p = _softmax64(student, temperature), _softmax64(teacher, temperature)
    per_position = {
        "fkl": lambda: _kl64(p, q),
        "rkl": lambda: _kl64(q, p),
        "jsd": lambda: beta * _kl64(p, beta * p + (1 - beta) * q)
        + (1 - beta) * _kl64(q, beta * p + (1 - beta) * q),
        "tvd": lambda: 0.5 * np.abs(p - q).sum(-1),
        "skl": lambda: _kl64(p, alpha * p + (1 - alpha) * q),
        "srkl": lambda: _kl64(q, alpha * q + (1 - alpha) * p),
    }[kind]()
    mask = np.ones(per_position.shape) if mask is None else np.asarray(mask, np.float64)
    return (per_position * mask).sum() / mask.sum()


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_divergence_matches_float64_reference(kind, temperature, masked):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{temperature}{masked}".encode()))
    student = rng.normal(size=(3, 7, 33)) * 3
    teacher = rng.normal(size=(3, 7, 33)) * 3
    mask = rng.random((3, 7)) > 0.3 if masked else None
    got = losses.divergence(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32),
                            kind, temperature=temperature, beta=0.3, alpha=0.2,
                            mask=None if mask is None else jnp.asarray(mask))
    want = reference(student, teacher, kind, temperature, 0.3, 0.2, mask)
    assert abs(float(got) - want) <= 1e-5 * max(abs(want), 1e-3)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_bf16_inputs_accumulate_in_float32(kind):
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(2, 64, 512)), rng.normal(size=(2, 64, 512))
    got = losses.divergence(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16),
                            kind)
    rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in (student, teacher)]
    want = reference(*rounded, kind, 1.0, 0.5, 0.1, None)
    assert got.dtype == jnp.float32
    assert abs(float(got) - want) <= 1e-4 * abs(want)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_padded_rows_with_inf_logits_give_finite_gradients(kind):
    rng = np.random.default_rng(2)
    student = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    student = student.at[3].set(-jnp.inf)
    teacher = teacher.at[3].set(-jnp.inf)
    mask = jnp.array([True, True, True, False])
    value, grad = jax.value_and_grad(
        lambda s: losses.divergence(s, teacher, kind, mask=mask))(student)
    unmasked = losses.divergence(student[:3], teacher[:3], kind)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(value), float(unmasked), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad[3]), 0.0)


def test_teacher_zero_probability_tokens_are_exact():
    """A vocabulary entry the teacher gives -inf contributes exactly 0 to KL(P‖Q)."""
    teacher = jnp.array([[0.0, 1.0, -jnp.inf]])
    student = jnp.array([[0.5, 0.2, 3.0]])
    value, grad = jax.value_and_grad(lambda s: losses.divergence(s, teacher, "fkl"))(student)
    p = _softmax64(np.array([[0.0, 1.0, -np.inf]]), 1.0)
    q = _softmax64(np.asarray(student), 1.0)
    np.testing.assert_allclose(float(value), _kl64(p, q)[0], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_cross_entropy_and_label_smoothing_match_reference():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(5, 6)), rng.integers(0, 6, size=5)
    log_probs = np.log(_softmax64(logits, 1.0))
    plain = -log_probs[np.arange(5), labels].mean()
    smoothed = (0.9 * -log_probs[np.arange(5), labels] - 0.1 * log_probs.mean(-1)).mean()
    np.testing.assert_allclose(
        float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))),
                               plain, rtol=1e-5)
    np.testing.assert_allclose(
        float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.1)),
        smoothed, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "kl"}, "unknown divergence 'kl'"),
    ({"kind": "jsd", "beta": 0.0}, "use kind='fkl' or kind='rkl'"),
    ({"kind": "jsd", "beta": 1.0}, "strictly inside"),
    ({"kind": "fkl", "temperature": 0.0}, "temperature must be > 0"),
    ({"kind": "skl", "alpha": 1.0}, "alpha in [0, 1)"),
])
def test_bad_arguments_are_explained(kwargs, message):
    logits = jnp.zeros((2, 4))
    with pytest.raises(DistillError, match=re.escape(message)):
        losses.divergence(logits, logits, **kwargs)


def test_vocab_mismatch_is_explained():
    with pytest.raises(DistillError, match="differ in shape; pad or slice"):
        losses.divergence(jnp.zeros((2, 4)), jnp.zeros((2, 5)), "fkl")


def _coarsened64(student, teacher, k, temperature, tail):
    """Float64 teacher top-k and student distributions over the top k (+ a tail bucket)."""
    q, p = _softmax64(student, temperature), _softmax64(teacher, temperature)
    top = np.argsort(-p, axis=-1)[..., :k]
    p_top, q_top = np.take_along_axis(p, top, -1), np.take_along_axis(q, top, -1)
    if tail == "renormalize":
        return q_top / q_top.sum(-1, keepdims=True), p_top / p_top.sum(-1, keepdims=True)
    return (np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1),
            np.concatenate([p_top, 1 - p_top.sum(-1, keepdims=True)], -1))


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
@pytest.mark.parametrize("tail", losses.TAILS)
def test_sparse_divergence_matches_float64_reference(kind, tail):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{tail}".encode()))
    student, teacher = rng.normal(size=(2, 5, 40)) * 2, rng.normal(size=(2, 5, 40)) * 2
    mask = rng.random((2, 5)) > 0.3
    top_log_probs, top_indices = losses.top_k_targets(jnp.asarray(teacher, jnp.float32), 8,
                                                      temperature=2.0)
    got = losses.sparse_divergence(jnp.asarray(student, jnp.float32), top_log_probs, top_indices,
                                   kind, temperature=2.0, beta=0.3, alpha=0.2,
                                   mask=jnp.asarray(mask), tail=tail)
    q, p = _coarsened64(student, teacher, 8, 2.0, tail)
    # The reference's divergence on already-normalised probabilities: logits = log-probs.
    want = reference(np.log(q), np.log(p), kind, 1.0, 0.3, 0.2, mask)
    assert abs(float(got) - want) <= 1e-5 * max(abs(want), 1e-3)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_sparse_divergence_with_the_whole_vocabulary_is_the_dense_one(kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    student = jnp.asarray(rng.normal(size=(4, 16)) * 2, jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(4, 16)) * 2, jnp.float32)
    targets = losses.top_k_targets(teacher, 16)
    sparse = functools.partial(losses.sparse_divergence, kind=kind)
    value, grad = jax.value_and_grad(lambda s: sparse(s, *targets))(student)
    dense, dense_grad = jax.value_and_grad(lambda s: losses.divergence(s, teacher, kind))(student)
    assert float(value) == pytest.approx(float(dense), rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-4, atol=1e-7)


def test_sparse_bucket_never_exceeds_the_dense_divergence():
    """Coarsening cannot increase an f-divergence (data-processing inequality)."""
    rng = np.random.default_rng(3)
    student = jnp.asarray(rng.normal(size=(64, 50)) * 2, jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(64, 50)) * 2, jnp.float32)
    for k in (1, 5, 20):
        for kind in ("fkl", "rkl", "tvd"):
            per_row = jax.vmap(lambda s, t, k=k, kind=kind: losses.sparse_divergence(
                s, *losses.top_k_targets(t, k), kind))(student, teacher)
            dense = losses.pointwise_divergence(student, teacher, kind)
            assert np.all(np.asarray(per_row) <= np.asarray(dense) + 1e-6), (k, kind)


def test_sparse_targets_of_another_layout_fail_with_the_fix():
    targets = losses.top_k_targets(jnp.zeros((3, 10)), 4)
    with pytest.raises(DistillError, match="cache them from the same batch layout"):
        losses.sparse_divergence(jnp.zeros((2, 10)), *targets, "fkl")
    with pytest.raises(DistillError, match="unknown tail"):
        losses.sparse_divergence(jnp.zeros((3, 10)), *targets, "fkl", tail="drop")


@pytest.mark.parametrize("settings, message", [
    ({"kind": "kl"}, "unknown divergence 'kl'; choose one of fkl, rkl, jsd, tvd, skl, srkl"),
    ({"kind": "jsd", "beta": 1.0}, "use kind='fkl' or kind='rkl'"),
    ({"kind": "rkl", "temperature": -1.0}, "temperature must be > 0"),
    ({"kind": "srkl", "skew": -0.1}, "srkl needs skew alpha in [0, 1)"),
])
def test_divergence_value_checks_itself(settings, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        losses.Divergence(**settings)


def test_divergence_value_is_a_hashable_static_argument():
    a = losses.Divergence("skl", 2, skew=np.float32(0.5))
    b = losses.Divergence("skl", 2.0, 0.5, 0.5)
    assert a == b and hash(a) == hash(b)
    # Settings a kind does not use are not checked: jsd's beta means nothing to fkl.
    assert losses.Divergence("fkl", beta=0.0).beta == 0.0


def test_a_divergence_value_may_stand_for_kind_and_its_keywords():
    rng = np.random.default_rng(4)
    student = jnp.asarray(rng.normal(size=(3, 20)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(3, 20)), jnp.float32)
    mask = jnp.array([True, False, True])
    div = losses.Divergence("srkl", temperature=2.0, skew=0.3)
    keywords = {"temperature": 2.0, "alpha": 0.3}
    assert float(losses.divergence(student, teacher, div, mask=mask)) == float(
        losses.divergence(student, teacher, "srkl", mask=mask, **keywords))
    targets = losses.top_k_targets(teacher, 5, temperature=2.0)
    assert float(losses.sparse_divergence(student, *targets, div, mask=mask)) == float(
        losses.sparse_divergence(student, *targets, "srkl", mask=mask, **keywords))
    with pytest.raises(DistillError, match="pass the settings inside the Divergence"):
        losses.divergence(student, teacher, div, temperature=3.0)


def test_a_kind_without_an_implementation_fails_instead_of_computing_another(monkeypatch):
    """A kind that passes validation but has no case in the dispatch must raise, never fall
    through to another kind's formula."""
    monkeypatch.setattr(losses, "DIVERGENCES", (*losses.DIVERGENCES, "fake"))
    logits = jnp.zeros((2, 4))
    targets = losses.top_k_targets(logits, 2)
    for compute in (lambda: losses.divergence(logits, logits, "fake"),
                    lambda: losses.pointwise_divergence(logits, logits, "fake"),
                    lambda: losses.sparse_divergence(logits, *targets, "fake"),
                    lambda: jax.jit(losses.divergence, static_argnums=2)(logits, logits, "fake")):
        with pytest.raises(DistillError, match="'fake' has no implementation in losses"):
            compute()
