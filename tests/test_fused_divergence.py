"""`fused_linear_divergence` (XLA path and Pallas kernels in interpret mode) against the unfused
float64 reference: values and student gradients, every divergence, temperature and mask."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.kernels import fused_divergence as fused

# Token and vocabulary counts that no block size divides, and a teacher wider than the student.
TOKENS, WIDTH, TEACHER_WIDTH, VOCAB = 45, 16, 24, 300
BLOCKS = {"block_tokens": 16, "block_vocab": 128}


def _inputs(seed: int, tokens: int = TOKENS, vocab: int = VOCAB):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(tokens, WIDTH)), rng.normal(size=(WIDTH, vocab)) * 0.6,
            rng.normal(size=(tokens, TEACHER_WIDTH)), rng.normal(size=(TEACHER_WIDTH, vocab)) * 0.6,
            rng.random(tokens) > 0.3)


def _reference64(inputs, kind, **kwargs):
    *arrays, mask = inputs
    with jax.enable_x64(True):
        arrays = [jnp.asarray(x, jnp.float64) for x in arrays]
        value, grads = jax.value_and_grad(fused.reference, argnums=(0, 1))(
            *arrays, kind, mask=jnp.asarray(mask), **kwargs)
        return float(value), [np.asarray(g) for g in grads]


def _fused32(inputs, kind, dtype=jnp.float32, **kwargs):
    *arrays, mask = inputs
    loss = functools.partial(fused.fused_linear_divergence, kind=kind, mask=jnp.asarray(mask),
                             **kwargs)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        *(jnp.asarray(x, dtype) for x in arrays))
    return float(value), [np.asarray(g, np.float64) for g in grads]


def _relative_error(got, want):
    return np.linalg.norm(np.ravel(got) - np.ravel(want)) / np.linalg.norm(np.ravel(want))


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_value_and_student_grads_match_float64_reference(implementation, kind):
    seed = losses.DIVERGENCES.index(kind) + 10 * (implementation == "pallas")
    inputs = _inputs(seed)
    for temperature in (1.0, 2.5):
        params = {"temperature": temperature, "beta": 0.3, "alpha": 0.2}
        want_value, want_grads = _reference64(inputs, kind, **params)
        value, grads = _fused32(inputs, kind, implementation=implementation, interpret=True,
                                **BLOCKS, **params)
        assert abs(value - want_value) <= 1e-5 * abs(want_value), (temperature, value, want_value)
        for got, want in zip(grads, want_grads):
            assert _relative_error(got, want) < 1e-5, temperature


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_value_without_grad_matches(implementation):
    inputs = _inputs(3)
    *arrays, mask = inputs
    value = fused.fused_linear_divergence(
        *(jnp.asarray(x, jnp.float32) for x in arrays), "jsd", mask=jnp.asarray(mask),
        implementation=implementation, interpret=True, **BLOCKS)
    want, _ = _reference64(inputs, "jsd")
    assert abs(float(value) - want) <= 1e-5 * want


@pytest.mark.parametrize("kind", ["fkl", "jsd", "tvd"])
def test_bf16_inputs_accumulate_in_float32(kind):
    inputs = _inputs(4)
    rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in inputs[:4]]
    want_value, want_grads = _reference64((*rounded, inputs[4]), kind)
    value, grads = _fused32(inputs, kind, dtype=jnp.bfloat16, implementation="xla", **BLOCKS)
    assert abs(value - want_value) <= 1e-4 * abs(want_value)
    for got, want in zip(grads, want_grads):
        assert _relative_error(got, want) < 1e-2  # the gradients are rounded to bf16


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_padded_rows_are_ignored_even_when_nan(implementation):
    student_hidden, student_head, teacher_hidden, teacher_head, mask = _inputs(5)
    poisoned = [np.where(mask[:, None], h, np.nan) for h in (student_hidden, teacher_hidden)]
    clean = _fused32((student_hidden, student_head, teacher_hidden, teacher_head, mask), "rkl",
                     implementation=implementation, interpret=True, **BLOCKS)
    value, (grad_hidden, grad_head) = _fused32(
        (poisoned[0], student_head, poisoned[1], teacher_head, mask), "rkl",
        implementation=implementation, interpret=True, **BLOCKS)
    assert value == pytest.approx(clean[0], rel=1e-6)
    np.testing.assert_allclose(grad_head, clean[1][1], rtol=1e-5, atol=1e-8)
    assert np.all(grad_hidden[~mask] == 0)


def test_teacher_gets_no_gradient():
    student_hidden, student_head, teacher_hidden, teacher_head, _ = (
        jnp.asarray(x, jnp.float32) for x in _inputs(6))
    grads = jax.grad(fused.fused_linear_divergence, argnums=(2, 3))(
        student_hidden, student_head, teacher_hidden, teacher_head, "fkl")
    assert all(float(jnp.max(jnp.abs(g))) == 0 for g in grads)


def test_sharded_inputs_match_unsharded():
    """Tokens over data, the vocabulary over tensor: same value and gradients as one device."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "tensor"))
    inputs = _inputs(7, tokens=64, vocab=256)
    *arrays, mask = (jnp.asarray(x) for x in inputs)
    arrays = [x.astype(jnp.float32) for x in arrays]
    specs = (P("data", None), P(None, "tensor"), P("data", None), P(None, "tensor"))
    sharded = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(arrays, specs)]
    mask_sharded = jax.device_put(mask, NamedSharding(mesh, P("data")))

    def loss(student_hidden, student_head, teacher_hidden, teacher_head, mask):
        return fused.fused_linear_divergence(student_hidden, student_head, teacher_hidden,
                                             teacher_head, "jsd", mask=mask, block_tokens=8)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    value, grads = step(*sharded, mask_sharded)
    want_value, want_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*arrays, mask)
    assert float(value) == pytest.approx(float(want_value), rel=1e-6)
    for got, want in zip(grads, want_grads):
        assert _relative_error(np.asarray(got), np.asarray(want)) < 1e-6
    assert grads[0].sharding.spec[0] == "data"  # the gradient stays sharded like its input


def test_temporary_memory_does_not_grow_with_the_logits():
    """Compiled value-and-grad: the fused path's temporaries stay O(chunk·V) while the tokens
    grow 8×; the unfused path's grow with N·V (XLA's memory analysis, no timing)."""

    def temporaries(loss, tokens):
        shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
                  ((tokens, 64), (64, 2048), (tokens, 64), (64, 2048))]
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def fused_loss(*args):
        return fused.fused_linear_divergence(*args, "jsd", block_tokens=64)

    def unfused_loss(*args):
        return fused.reference(*args, "jsd")

    small, large = temporaries(fused_loss, 256), temporaries(fused_loss, 2048)
    logits_bytes = 2048 * 2048 * 4
    assert large - small < logits_bytes / 4  # grows only by [N, d] buffers, not by logits
    assert temporaries(unfused_loss, 2048) > 8 * large


@pytest.mark.parametrize("bad, message", [
    ({"kind": "kl"}, "unknown divergence"),
    ({"kind": "jsd", "beta": 1.0}, "use kind='fkl'"),
    ({"teacher_head": np.zeros((TEACHER_WIDTH, VOCAB + 1))}, "pad or slice"),
    ({"student_head": np.zeros((WIDTH + 1, VOCAB))}, "must be \\[width=16"),
    ({"mask": np.ones(TOKENS + 1, bool)}, "mask shape"),
    ({"implementation": "triton"}, "unknown implementation"),
])
def test_bad_arguments_fail_with_the_fix(bad, message):
    student_hidden, student_head, teacher_hidden, teacher_head, mask = _inputs(8)
    args = {"student_hidden": student_hidden, "student_head": student_head,
            "teacher_hidden": teacher_hidden, "teacher_head": teacher_head, "kind": "fkl",
            "mask": mask, **bad}
    with pytest.raises(DistillError, match=message):
        fused.fused_linear_divergence(**{k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
                                         for k, v in args.items()})


def test_a_divergence_value_may_stand_for_kind_and_its_keywords():
    *arrays, mask = (jnp.asarray(x) for x in _inputs(9))
    arrays = [x.astype(jnp.float32) for x in arrays]
    div = losses.Divergence("jsd", temperature=2.0, beta=0.3)
    value = fused.fused_linear_divergence(*arrays, div, mask=mask, **BLOCKS)
    want = fused.fused_linear_divergence(*arrays, "jsd", temperature=2.0, beta=0.3, mask=mask,
                                         **BLOCKS)
    assert float(value) == float(want)
    with pytest.raises(DistillError, match="pass the settings inside the Divergence"):
        fused.fused_linear_divergence(*arrays, div, beta=0.4)


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_a_kind_without_a_fused_implementation_fails(implementation, monkeypatch):
    """A kind that passes validation but has no case in `entry_terms` must raise on every path,
    value and gradient, never fall through to another kind's terms."""
    monkeypatch.setattr(losses, "DIVERGENCES", (*losses.DIVERGENCES, "fake"))
    arrays = [jnp.asarray(x, jnp.float32) for x in _inputs(10)[:4]]
    loss = functools.partial(fused.fused_linear_divergence, kind="fake",
                             implementation=implementation, interpret=True, **BLOCKS)
    for compute in (loss, jax.grad(loss, argnums=(0, 1))):
        with pytest.raises(DistillError, match="'fake' has no fused implementation"):
            compute(*arrays)
