"""`flash_attention` (chunked XLA path and Pallas kernels in interpret mode) against the naive
float64 reference: values, `jax.grad` in q, k, v, `jax.jvp` tangents, causal or not; vmap, jit,
bf16, checkpoint; the compiled JVP's memory; and the argument checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.errors import DistillError
from jaxdistill.kernels.flash_attention import attention_reference, flash_attention

SHAPE = (2, 64, 2, 16)  # B, S, H, D
BLOCKS = {"block_q": 16, "block_k": 32}


def _normal(seed: int, shape=SHAPE, count: int = 7):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(count)]


def _relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(np.ravel(got - want)) / np.linalg.norm(np.ravel(want))


def _everything(attention, q, k, v, q_dot, k_dot, v_dot, cotangent):
    """(value, jvp tangent, grads in q, k, v of Σ cotangent ⊙ attention)."""
    value, tangent = jax.jvp(attention, (q, k, v), (q_dot, k_dot, v_dot))
    grads = jax.grad(lambda *qkv: jnp.sum(attention(*qkv) * cotangent), argnums=(0, 1, 2))(
        q, k, v)
    return value, tangent, grads


def _reference64(arrays, causal: bool):
    with jax.enable_x64(True):
        arrays = [jnp.asarray(x, jnp.float64) for x in arrays]
        reference = functools.partial(attention_reference, causal=causal)
        value, tangent, grads = _everything(reference, *arrays)
        return [np.asarray(x) for x in (value, tangent, *grads)]


def _flash(arrays, dtype=jnp.float32, **kwargs):
    attention = functools.partial(flash_attention, **kwargs)
    value, tangent, grads = jax.jit(functools.partial(_everything, attention))(
        *(jnp.asarray(x, dtype) for x in arrays))
    return [np.asarray(x, np.float64) for x in (value, tangent, *grads)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
def test_value_jvp_and_grads_match_float64_reference(implementation, causal):
    arrays = _normal(2 * causal + (implementation == "xla"))
    want = _reference64(arrays, causal)
    got = _flash(arrays, causal=causal, implementation=implementation, **BLOCKS)
    for name, g, w in zip(("value", "jvp", "dq", "dk", "dv"), got, want):
        assert _relative_error(g, w) < 1e-5, name


def test_queries_and_keys_of_different_lengths():
    rng = np.random.default_rng(5)
    q, q_dot = (rng.normal(size=(2, 32, 2, 16)) for _ in range(2))
    k, v, k_dot, v_dot = (rng.normal(size=SHAPE) for _ in range(4))
    cotangent = rng.normal(size=q.shape)
    arrays = [q, k, v, q_dot, k_dot, v_dot, cotangent]
    want = _reference64(arrays, causal=False)
    for implementation in ("xla", "pallas_interpret"):
        got = _flash(arrays, implementation=implementation, **BLOCKS)
        assert all(_relative_error(g, w) < 1e-5 for g, w in zip(got, want)), implementation


def test_bf16_inputs_accumulate_in_float32():
    arrays = _normal(6)
    rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in arrays]
    want = _reference64(rounded, causal=True)
    got = _flash(arrays, dtype=jnp.bfloat16, causal=True, implementation="xla", **BLOCKS)
    for name, g, w in zip(("value", "jvp", "dq", "dk", "dv"), got, want):
        assert _relative_error(g, w) < 2e-2, name  # outputs are rounded to bf16


def test_vmap_matches_a_loop_over_the_mapped_axis():
    """vmap over a leading axis of q and v (k shared): value, jvp tangent and q's gradient."""
    q, k, v, q_dot, k_dot, v_dot, cotangent = (
        jnp.asarray(x, jnp.float32) for x in _normal(7, shape=(3, *SHAPE)))
    k, k_dot = k[0], k_dot[0]
    attention = functools.partial(flash_attention, causal=True, implementation="xla", **BLOCKS)

    def one(q, v, q_dot, v_dot, cotangent):
        value, tangent = jax.jvp(attention, (q, k, v), (q_dot, k_dot, v_dot))
        grad_q = jax.grad(lambda q: jnp.sum(attention(q, k, v) * cotangent))(q)
        return value, tangent, grad_q

    batched = jax.jit(jax.vmap(one))(q, v, q_dot, v_dot, cotangent)
    for index in range(3):
        looped = one(q[index], v[index], q_dot[index], v_dot[index], cotangent[index])
        for got, want in zip(batched, looped):
            assert _relative_error(got[index], want) < 1e-6


def test_checkpoint_and_linearize():
    """grad through jax.checkpoint (partial_eval_jaxpr_custom) and jax.linearize's linear map."""
    arrays = _normal(8)
    q, k, v, q_dot, k_dot, v_dot, cotangent = (jnp.asarray(x, jnp.float32) for x in arrays)
    want = _reference64(arrays, causal=True)
    attention = functools.partial(flash_attention, causal=True, implementation="xla", **BLOCKS)
    grads = jax.jit(jax.grad(lambda *qkv: jnp.sum(jax.checkpoint(attention)(*qkv) * cotangent),
                             argnums=(0, 1, 2)))(q, k, v)
    assert all(_relative_error(g, w) < 1e-5 for g, w in zip(grads, want[2:]))
    value, linear = jax.linearize(attention, q, k, v)
    assert _relative_error(value, want[0]) < 1e-5
    assert _relative_error(linear(q_dot, k_dot, v_dot), want[1]) < 1e-5


def test_jvp_is_one_fused_kernel_and_grad_runs_the_backward():
    x = jnp.ones(SHAPE, jnp.float32)
    attention = functools.partial(flash_attention, implementation="xla", **BLOCKS)
    jvp = str(jax.make_jaxpr(lambda *a: jax.jvp(attention, a, a))(x, x, x))
    assert "flash_attention_jvp" in jvp and "flash_attention_fwd" not in jvp
    grad = str(jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(attention(*a))))(x, x, x))
    assert "flash_attention_fwd" in grad and "flash_attention_jvp" not in grad


def test_compiled_jvp_and_grad_memory_is_linear_in_sequence():
    """XLA's memory analysis at S = 2048: the flash JVP's and grad's temporaries stay far below
    one S×S float32 array, while jax.jvp of the naive attention needs several (structural)."""
    seq = 2048
    shape = jax.ShapeDtypeStruct((1, seq, 1, 32), jnp.float32)
    square = seq * seq * 4

    def temporaries(fn):
        return jax.jit(fn).lower(shape, shape, shape).compile().memory_analysis() \
            .temp_size_in_bytes

    flash = functools.partial(flash_attention, implementation="xla", block_q=128, block_k=128)
    assert temporaries(lambda *a: jax.jvp(flash, a, a)) < square / 8
    assert temporaries(jax.grad(lambda *a: jnp.sum(flash(*a)), argnums=(0, 1, 2))) < square / 8
    assert temporaries(lambda *a: jax.jvp(attention_reference, a, a)) > square


@pytest.mark.parametrize("shapes, kwargs, message", [
    (((2, 64, 16), SHAPE, SHAPE), {}, "batch, seq, heads, head_dim"),
    ((SHAPE, SHAPE, (2, 32, 2, 16)), {}, "same shape"),
    ((SHAPE, (2, 64, 4, 16), (2, 64, 4, 16)), {}, "heads"),
    (((2, 32, 2, 16), SHAPE, SHAPE), {"causal": True}, "as many queries as keys"),
    ((SHAPE,) * 3, {"block_q": 24}, "divisor"),
    ((SHAPE,) * 3, {"implementation": "pallas_interpret", "block_k": 8}, "powers of two"),
    (((2, 64, 2, 24),) * 3, {"implementation": "pallas_interpret"}, "head_dim=24"),
    ((SHAPE,) * 3, {"implementation": "triton"}, "unknown implementation"),
    ((SHAPE,) * 3, {"implementation": "pallas"}, "pallas_interpret"),
])
def test_bad_arguments_are_refused_before_compiling(shapes, kwargs, message):
    arrays = [jnp.zeros(s, jnp.float32) for s in shapes]
    with pytest.raises(DistillError, match=message):
        flash_attention(*arrays, **kwargs)


def test_mixed_dtypes_are_refused():
    x = jnp.zeros(SHAPE, jnp.float32)
    with pytest.raises(DistillError, match="dtype"):
        flash_attention(x, x.astype(jnp.bfloat16), x)
