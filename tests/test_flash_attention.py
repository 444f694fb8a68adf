"""`flash_attention` (chunked XLA path and Pallas kernels in interpret mode) against the naive
float64 reference: values, `jax.grad` in q, k, v, `jax.jvp` tangents, causal or not, with
packed segment ids and a sliding window; vmap, jit, bf16, checkpoint; the compiled JVP's memory;
and the argument checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.errors import DistillError
from jaxdistill.kernels.flash_attention import attention_reference, flash_attention
from jaxdistill.models.llama import causal_segment_mask, sliding_window_mask

SHAPE = (2, 64, 2, 16)  # B, S, H, D
BLOCKS = {"block_q": 16, "block_k": 32}
# Packed rows: segments cross block boundaries, trailing padding (0); row 1's last query block
# is all padding. A window of 10 hides whole blocks and, in the first block a query block
# reads, every key from some of its rows.
SEGMENTS = np.array([[1] * 20 + [2] * 30 + [3] * 6 + [0] * 8,
                     [5] * 9 + [7] * 39 + [0] * 16], np.int32)
WINDOW = 10


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


def _reference64(arrays, causal: bool, **masks):
    with jax.enable_x64(True):
        arrays = [jnp.asarray(x, jnp.float64) for x in arrays]
        reference = functools.partial(attention_reference, causal=causal, **masks)
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


@pytest.mark.parametrize("causal, masks", [
    (True, {"segment_ids": SEGMENTS}),
    (True, {"window": WINDOW}),
    (False, {"segment_ids": SEGMENTS}),  # bidirectional within a segment
], ids=["segments", "window", "segments-bidirectional"])
@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
def test_masks_match_float64_reference(implementation, causal, masks):
    """Padding queries output exactly 0, and nothing (value, tangent, grads) is NaN or ∞."""
    arrays = _normal(9 + 2 * causal + ("window" in masks))
    want = _reference64(arrays, causal, **masks)
    got = _flash(arrays, causal=causal, implementation=implementation, **masks, **BLOCKS)
    for name, g, w in zip(("value", "jvp", "dq", "dk", "dv"), got, want):
        assert np.all(np.isfinite(g)), name
        assert _relative_error(g, w) < 1e-5, name
    if "segment_ids" in masks:
        assert np.all(got[0][SEGMENTS == 0] == 0) and np.all(got[1][SEGMENTS == 0] == 0)


def test_reference_masks_are_the_llama_masks():
    """attention_reference's segment and window masks are `causal_segment_mask` and
    `sliding_window_mask` of the Llama model, on the queries that are not padding."""
    q, k, v = (jnp.asarray(x, jnp.float32) for x in _normal(12, count=3))
    slots = jnp.arange(SHAPE[1])
    mask = causal_segment_mask(jnp.asarray(SEGMENTS), jnp.asarray(SEGMENTS), slots) \
        & sliding_window_mask(slots, SHAPE[1], WINDOW)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(SHAPE[3])
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
    want = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    got = attention_reference(q, k, v, causal=True, segment_ids=SEGMENTS, window=WINDOW)
    real = SEGMENTS != 0
    np.testing.assert_allclose(got[real], want[real], rtol=1e-6, atol=1e-6)


def test_segments_and_window_under_vmap_linearize_and_checkpoint():
    """Segment ids as a mapped operand of vmap (one row per mapped index), jax.linearize's
    linear map, and grad through jax.checkpoint, segments and window together."""
    arrays = _normal(13)
    want = _reference64(arrays, True, segment_ids=SEGMENTS, window=WINDOW)
    attention = functools.partial(flash_attention, causal=True, window=WINDOW,
                                  implementation="xla", **BLOCKS)

    def one(q, k, v, q_dot, k_dot, v_dot, cotangent, segments):
        def attend(q, k, v):
            return attention(q[None], k[None], v[None], segment_ids=segments[None])[0]

        value, linear = jax.linearize(attend, q, k, v)
        grads = jax.grad(lambda *qkv: jnp.sum(jax.checkpoint(attend)(*qkv) * cotangent),
                         argnums=(0, 1, 2))(q, k, v)
        return value, linear(q_dot, k_dot, v_dot), *grads

    got = jax.jit(jax.vmap(one))(*(jnp.asarray(x, jnp.float32) for x in arrays), SEGMENTS)
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
    ((SHAPE,) * 3, {"window": 8}, "needs causal=True"),
    ((SHAPE,) * 3, {"causal": True, "window": 0}, "positive int"),
    ((SHAPE,) * 3, {"segment_ids": SEGMENTS[:, :32]}, "segment_ids must be integers"),
    ((SHAPE,) * 3, {"segment_ids": SEGMENTS.astype(np.float32)}, "segment_ids must be integers"),
    (((2, 32, 2, 16), SHAPE, SHAPE), {"segment_ids": SEGMENTS[:, :32]}, "as many keys"),
])
def test_bad_arguments_are_refused_before_compiling(shapes, kwargs, message):
    arrays = [jnp.zeros(s, jnp.float32) for s in shapes]
    with pytest.raises(DistillError, match=message):
        flash_attention(*arrays, **kwargs)


def test_mixed_dtypes_are_refused():
    x = jnp.zeros(SHAPE, jnp.float32)
    with pytest.raises(DistillError, match="dtype"):
        flash_attention(x, x.astype(jnp.bfloat16), x)
