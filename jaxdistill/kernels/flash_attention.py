"""Exact attention, softmax(q·kᵀ/√D)·v, differentiable in forward and reverse mode through fused
kernels whose memory is linear in the sequence length (no [S, S] array is ever materialized).

    flash_attention(q, k, v, causal=..., segment_ids=..., window=...)
        ==  attention_reference(q, k, v, causal=..., segment_ids=..., window=...)

with [B, S, H, D] inputs. Every attention kernel JAX ships is a `custom_vjp`, so `jax.jvp`
through it fails, and a raw `pallas_call` has no transpose rule, so `jax.grad` through one fails
(DESIGN.md §5). Consistency models, MeanFlow and other JVP-based distillation objectives need
both, so attention here is a `custom_jvp` built on three primitives:

- `fwd_p(q, k, v) -> (O, lse)`: the flash forward (online softmax over K/V blocks); the
  per-row log-sum-exp is kept for the backward.
- `jvp_p(q, k, v, q̇, k̇, v̇) -> (O, Ȯ)`: the custom_jvp rule. Its kernel makes ONE pass over the
  K/V blocks with running m, l, r, acc, accA, accB (rCM's FlashAttention-2 JVP recurrence), so
  `jax.jvp` costs about 3 forward passes of matmuls and no extra memory.
- `tangent_p(q, k, v, O, lse, q̇, k̇, v̇) -> Ȯ`: linear in (q̇, k̇, v̇); its transpose rule is the
  FlashAttention-2 backward (P recomputed block by block from lse, Dᵢ = rowsum(dO⊙O),
  dS = P⊙(dP − D)).

`jax.grad` linearizes: it runs the JVP rule with known primals and unknown tangents and splits it
by partial evaluation. `jvp_p` carries partial-eval rules (for `jax.linearize`/`jax.grad` and for
`jax.checkpoint`'s partial_eval_jaxpr_custom) that split it into the known `fwd_p` and the
staged, linear `tangent_p`; transposing `tangent_p` runs the flash backward. So `jax.jvp` runs
the fused pass and `jax.grad` runs forward + backward, never a JVP. All three primitives have
abstract evaluation, a batching rule (vmap folds the mapped axis into B) and a lowering through
`mlir.lower_fun`. Segment ids, when given, are one more operand at the end of each
primitive's operands (integer, never differentiated); the window is a field of the static
`Config`. There are no sharding rules: under `jit` with sharded inputs XLA treats the
kernels as opaque (the chunked XLA path partitions like any jitted code, the Pallas calls do
not); wrap the call in `shard_map` over batch/heads to run it per shard. Second-order
derivatives (a JVP of a JVP, grad of a function that takes a JVP) are not implemented: apply
`stop_gradient` before the JVP, as sCM/MeanFlow targets do.

Two masks besides `causal` serve causal language models trained on packed rows (they are
`causal_segment_mask` and `sliding_window_mask` of `jaxdistill.models.llama`): `segment_ids`
[B, S] lets a query see only keys of its own segment, so several documents share one row without
attending across, and segment 0 is padding that no query sees (a padding query outputs 0 and
passes no gradient); `window` is a causal sliding window (query i sees keys i − window < j ≤ i,
Hugging Face's `sliding_window`), as Gemma's and Mistral's local layers need.

Two implementations share the block recurrences below: a chunked XLA path (`lax.map` over
query blocks, `fori_loop` over K/V blocks; "auto" on CPU) and Pallas kernels
(`flash_attention_pallas`; "auto" on GPU and TPU; "pallas_interpret" runs them in interpret mode
on CPU for tests). Both accumulate in float32 whatever the input dtype, skip K/V blocks that the
causal mask or the window hides entirely (`kv_block_range`, `q_block_range`), and mask every
block they read with `jnp.where` on one mask function, `block_keep`. Segments are data, so
blocks they hide are read and masked, not skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir
from jax.interpreters import partial_eval as pe
from jaxtyping import Array, Float, Int

from jaxdistill.errors import DistillError

IMPLEMENTATIONS = ("auto", "xla", "pallas", "pallas_interpret")
# Default blocks: the XLA path wants big blocks (few loop steps, big matmuls on the CPU); Triton
# wants powers of two small enough for the JVP kernel's six accumulators to stay in registers;
# Mosaic TPU wants multiples of 128 (the lane width) for the [block_q, block_k] score tile.
_DEFAULT_BLOCKS = {"xla": (512, 512), "gpu": (64, 64), "tpu": (128, 128)}
_XLA_TILE_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class Config:
    """The static settings of one attention call (hashable: primitives' params key on it)."""

    causal: bool
    implementation: str  # "xla" or "pallas"
    block_q: int
    block_k: int
    interpret: bool = False
    window: int | None = None  # causal sliding window, in slots (the query's own counts)


# ----------------------------------------------------------------------------------------------
# Block recurrences, shared by the XLA path ([B, H, rows, D] blocks) and the Pallas kernels
# ([rows, D] blocks): every dot accumulates in float32 and treats leading axes as batch axes.


def _dot(a, b, contract_a: int, contract_b: int):
    batch = tuple(range(a.ndim - 2))
    dims = (((a.ndim - 2 + contract_a,), (b.ndim - 2 + contract_b,)), (batch, batch))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def dot_nt(a, b):
    """a·bᵀ over the last axis: [.., m, d] × [.., n, d] -> [.., m, n]."""
    return _dot(a, b, 1, 1)


def dot_nn(a, b):
    """a·b: [.., m, n] × [.., n, d] -> [.., m, d]."""
    return _dot(a, b, 1, 0)


def dot_tn(a, b):
    """aᵀ·b: [.., n, m] × [.., n, d] -> [.., m, d]."""
    return _dot(a, b, 0, 0)


def block_keep(cfg: Config, q_block, kv_block, q_segments=None, k_segments=None):
    """Which keys of K/V block `kv_block` the queries of query block `q_block` see: [..,
    block_q, block_k] booleans, or None when all. Query slot r sees key slot c iff c ≤ r
    (causal), r − window < c (window) and both lie in one nonzero segment (segment 0 is
    padding). q_segments [.., block_q] and k_segments [.., block_k] are the blocks' segment ids
    (None without segments); their leading axes broadcast against the scores'."""
    keep = None
    if cfg.causal:
        shape = (cfg.block_q, cfg.block_k)
        row = q_block * cfg.block_q + lax.broadcasted_iota(jnp.int32, shape, 0)
        col = kv_block * cfg.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
        keep = row >= col
        if cfg.window is not None:
            keep = keep & (row - cfg.window < col)
    if q_segments is not None:
        k_segments = k_segments[..., None, :]
        same = (q_segments[..., :, None] == k_segments) & (k_segments != 0)
        keep = same if keep is None else keep & same
    return keep


def kv_block_range(cfg: Config, q_block, num_kv_blocks: int):
    """[first, stop) of the K/V blocks query block `q_block` reads: all, or those from the
    window's start (its first row's) to the diagonal."""
    if not cfg.causal:
        return 0, num_kv_blocks
    stop = jnp.minimum(num_kv_blocks, lax.div((q_block + 1) * cfg.block_q + cfg.block_k - 1,
                                              cfg.block_k))
    if cfg.window is None:
        return 0, stop
    return lax.div(jnp.maximum(q_block * cfg.block_q - cfg.window + 1, 0), cfg.block_k), stop


def q_block_range(cfg: Config, kv_block, num_q_blocks: int):
    """[first, stop) of the query blocks that see some key of K/V block `kv_block`: all, or
    those from the diagonal to the window's end (its last key's)."""
    if not cfg.causal:
        return 0, num_q_blocks
    first = lax.div(kv_block * cfg.block_k, cfg.block_q)
    if cfg.window is None:
        return first, num_q_blocks
    last_row = (kv_block + 1) * cfg.block_k + cfg.window - 2
    return first, jnp.minimum(num_q_blocks, lax.div(last_row, cfg.block_q) + 1)


def forward_init(rows_shape):
    """(m, l, acc) before the first block; rows_shape = [.., rows, D]."""
    return (jnp.full(rows_shape[:-1], -jnp.inf, jnp.float32),
            jnp.zeros(rows_shape[:-1], jnp.float32), jnp.zeros(rows_shape, jnp.float32))


def _shift(m):
    """The running max as the exponents' shift, 0 for rows that have seen no key yet (m = −∞:
    a window or a segment can hide a whole block from a row, padding hides every key), so
    e^(m_old − shift) and e^(s − shift) are 0 there rather than e^(−∞ + ∞) = NaN."""
    return jnp.where(m == -jnp.inf, 0.0, m)


def _normalizer(l):
    """l, or 1 for rows that saw no key (l = 0, and so are their accumulators: output 0)."""
    return jnp.where(l == 0.0, 1.0, l)[..., None]


def forward_step(state, q, k, v, scale: float, keep):
    """Online softmax over one K/V block: m running max, l running Σp, acc running p·v."""
    m, l, acc = state
    s = dot_nt(q, k) * scale
    if keep is not None:
        s = jnp.where(keep, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    shift = _shift(m_new)
    alpha = jnp.exp(m - shift)
    p = jnp.exp(s - shift[..., None])
    l = alpha * l + jnp.sum(p, axis=-1)
    acc = alpha[..., None] * acc + dot_nn(p.astype(v.dtype), v)
    return m_new, l, acc


def forward_finish(state):
    """(O in float32, lse); a row that saw no key gets O = 0 and lse = +∞, so the backward's
    P = e^(s − lse) is 0 on it."""
    m, l, acc = state
    return acc / _normalizer(l), jnp.where(l == 0.0, jnp.inf, m + jnp.log(l))


def jvp_init(rows_shape):
    """(m, l, r, acc, accA, accB) before the first block."""
    m, l, acc = forward_init(rows_shape)
    return m, l, jnp.zeros_like(l), acc, jnp.zeros_like(acc), jnp.zeros_like(acc)


def jvp_step(state, q, k, v, q_dot, k_dot, v_dot, scale: float, keep):
    """One K/V block of the fused (O, Ȯ) recurrence (DESIGN.md §5): with p = e^(s − m) and
    ṡ = (q̇·kᵀ + q·k̇ᵀ)·scale, l += Σp, r += Σp⊙ṡ, acc += p·v, accA += p·v̇, accB += (p⊙ṡ)·v,
    all rescaled by α = e^(m_old − m) when the running max moves."""
    m, l, r, acc, acc_a, acc_b = state
    s = dot_nt(q, k) * scale
    s_dot = (dot_nt(q_dot, k) + dot_nt(q, k_dot)) * scale
    if keep is not None:
        s = jnp.where(keep, s, -jnp.inf)
        s_dot = jnp.where(keep, s_dot, 0.0)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    shift = _shift(m_new)
    alpha = jnp.exp(m - shift)
    p = jnp.exp(s - shift[..., None])
    p_s_dot = p * s_dot
    l = alpha * l + jnp.sum(p, axis=-1)
    r = alpha * r + jnp.sum(p_s_dot, axis=-1)
    acc = alpha[..., None] * acc + dot_nn(p.astype(v.dtype), v)
    acc_a = alpha[..., None] * acc_a + dot_nn(p.astype(v_dot.dtype), v_dot)
    acc_b = alpha[..., None] * acc_b + dot_nn(p_s_dot.astype(v.dtype), v)
    return m_new, l, r, acc, acc_a, acc_b


def jvp_finish(state):
    """(O, Ȯ) in float32: O = acc/l, Ȯ = (accA + accB − r·O)/l."""
    _, l, r, acc, acc_a, acc_b = state
    l = _normalizer(l)
    out = acc / l
    return out, (acc_a + acc_b - r[..., None] * out) / l


def backward_scores(q, k, v, d_out, lse, delta, scale: float, keep):
    """(P, dS) of one block: P = e^(s − lse) recomputed, dS = P⊙(dO·vᵀ − D)."""
    s = dot_nt(q, k) * scale
    if keep is not None:
        s = jnp.where(keep, s, -jnp.inf)
    p = jnp.exp(s - lse[..., None])
    d_p = dot_nt(d_out, v)
    return p, p * (d_p - delta[..., None])


# ----------------------------------------------------------------------------------------------
# The chunked XLA path, on [B, H, S, D] arrays.


def _blocks(x, block: int):
    """[B, H, S, D] -> [S/block, B, H, block, D]."""
    b, h, s, d = x.shape
    return jnp.moveaxis(x.reshape(b, h, s // block, block, d), 2, 0)


def _unblocks(x):
    """[n, B, H, block, ...] -> [B, H, n·block, ...]."""
    x = jnp.moveaxis(x, 0, 2)
    return x.reshape(*x.shape[:2], -1, *x.shape[4:])


def _kv_block(x, j, block: int):
    return lax.dynamic_slice_in_dim(x, j * block, block, axis=2)


def _keep(cfg: Config, i, j, segments):
    """`block_keep` of query block i and K/V block j; segments [B, 1, S] (or None)."""
    if segments is None:
        return block_keep(cfg, i, j)
    return block_keep(cfg, i, j, _kv_block(segments, i, cfg.block_q),
                      _kv_block(segments, j, cfg.block_k))


def _xla_forward(cfg: Config, q, k, v, segments):
    scale, num_kv = q.shape[-1] ** -0.5, k.shape[2] // cfg.block_k

    def query_block(args):
        i, q_i = args

        def body(j, state):
            return forward_step(state, q_i, _kv_block(k, j, cfg.block_k),
                                _kv_block(v, j, cfg.block_k), scale, _keep(cfg, i, j, segments))

        state = lax.fori_loop(*kv_block_range(cfg, i, num_kv), body, forward_init(q_i.shape))
        return forward_finish(state)

    q_blocks = _blocks(q, cfg.block_q)
    out, lse = lax.map(query_block, (jnp.arange(q_blocks.shape[0]), q_blocks))
    return _unblocks(out).astype(q.dtype), _unblocks(lse)


def _xla_jvp(cfg: Config, q, k, v, q_dot, k_dot, v_dot, segments):
    scale, num_kv = q.shape[-1] ** -0.5, k.shape[2] // cfg.block_k

    def query_block(args):
        i, q_i, q_dot_i = args

        def body(j, state):
            kv = [_kv_block(x, j, cfg.block_k) for x in (k, v, k_dot, v_dot)]
            return jvp_step(state, q_i, kv[0], kv[1], q_dot_i, kv[2], kv[3], scale,
                            _keep(cfg, i, j, segments))

        state = lax.fori_loop(*kv_block_range(cfg, i, num_kv), body, jvp_init(q_i.shape))
        return jvp_finish(state)

    q_blocks, q_dot_blocks = _blocks(q, cfg.block_q), _blocks(q_dot, cfg.block_q)
    out, out_dot = lax.map(query_block, (jnp.arange(q_blocks.shape[0]), q_blocks, q_dot_blocks))
    return _unblocks(out).astype(q.dtype), _unblocks(out_dot).astype(q.dtype)


def _xla_backward(cfg: Config, q, k, v, out, lse, d_out, segments):
    """dq per query block over its K/V blocks; dk, dv per K/V block over its query blocks."""
    scale = q.shape[-1] ** -0.5
    num_q, num_kv = q.shape[2] // cfg.block_q, k.shape[2] // cfg.block_k
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def rows(x, i):
        return lax.dynamic_slice_in_dim(x, i * cfg.block_q, cfg.block_q, axis=2)

    def query_block(i):
        q_i, d_out_i, lse_i, delta_i = rows(q, i), rows(d_out, i), rows(lse, i), rows(delta, i)

        def body(j, d_q):
            k_j = _kv_block(k, j, cfg.block_k)
            _, d_s = backward_scores(q_i, k_j, _kv_block(v, j, cfg.block_k), d_out_i, lse_i,
                                     delta_i, scale, _keep(cfg, i, j, segments))
            return d_q + dot_nn(d_s.astype(k.dtype), k_j) * scale

        return lax.fori_loop(*kv_block_range(cfg, i, num_kv), body,
                             jnp.zeros(q_i.shape, jnp.float32))

    def kv_block(j):
        k_j, v_j = _kv_block(k, j, cfg.block_k), _kv_block(v, j, cfg.block_k)

        def body(i, grads):
            q_i, d_out_i = rows(q, i), rows(d_out, i)
            p, d_s = backward_scores(q_i, k_j, v_j, d_out_i, rows(lse, i), rows(delta, i), scale,
                                     _keep(cfg, i, j, segments))
            return (grads[0] + dot_tn(d_s.astype(q.dtype), q_i) * scale,
                    grads[1] + dot_tn(p.astype(d_out.dtype), d_out_i))

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        return lax.fori_loop(*q_block_range(cfg, j, num_q), body, (zeros, zeros))

    d_q = _unblocks(lax.map(query_block, jnp.arange(num_q)))
    d_k, d_v = (_unblocks(x) for x in lax.map(kv_block, jnp.arange(num_kv)))
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


# ----------------------------------------------------------------------------------------------
# Dispatch: primitives see [B, S, H, D] and [B, S] segment ids; both paths work on [B, H, S, D]
# and [B, 1, S] (or None).


def _path(cfg: Config):
    if cfg.implementation == "pallas":
        # Imported here: the Pallas module imports this one, and the XLA path never loads Pallas.
        from jaxdistill.kernels import flash_attention_pallas

        return flash_attention_pallas
    return _XLA_PATH


class _XLA_PATH:  # noqa: N801 (a namespace with the Pallas module's three functions)
    forward, jvp, backward = map(staticmethod, (_xla_forward, _xla_jvp, _xla_backward))


def _heads_first(*xs):
    return [jnp.swapaxes(x, 1, 2) for x in xs]


def _segments(segments):
    """The primitives' optional last operand, () or ([B, S] ids,), as [B, 1, S] or None."""
    return segments[0][:, None, :] if segments else None


def _forward_impl(q, k, v, *segments, cfg: Config):
    out, lse = _path(cfg).forward(cfg, *_heads_first(q, k, v), _segments(segments))
    return jnp.swapaxes(out, 1, 2), lse


def _jvp_impl(q, k, v, q_dot, k_dot, v_dot, *segments, cfg: Config):
    out, out_dot = _path(cfg).jvp(cfg, *_heads_first(q, k, v, q_dot, k_dot, v_dot),
                                  _segments(segments))
    return _heads_first(out, out_dot)


def _tangent_impl(q, k, v, out, lse, q_dot, k_dot, v_dot, *segments, cfg: Config):
    """Evaluated only when a linearized function is applied (`jax.linearize`): recompute."""
    del out, lse
    return [_jvp_impl(q, k, v, q_dot, k_dot, v_dot, *segments, cfg=cfg)[1]]


def _backward(cfg: Config, q, k, v, out, lse, d_out, segments):
    grads = _path(cfg).backward(cfg, *_heads_first(q, k, v, out), lse, *_heads_first(d_out),
                                _segments(segments))
    return _heads_first(*grads)


# ----------------------------------------------------------------------------------------------
# Primitives.


def _batch_rule(prim, args, dims, *, cfg: Config):
    """vmap: the mapped axis moves to the front and is folded into the batch axis B (lse is
    [B, H, S] and segment ids [B, S], also batch-first, so the same fold serves every
    operand)."""
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    front = [jnp.broadcast_to(x, (size, *x.shape)) if d is None
             else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims)]
    outs = prim.bind(*(x.reshape(-1, *x.shape[2:]) for x in front), cfg=cfg)
    return [x.reshape(size, -1, *x.shape[1:]) for x in outs], [0] * len(outs)


def _primitive(name: str, impl, abstract_eval):
    prim = jex_core.Primitive(name)
    prim.multiple_results = True
    prim.def_impl(functools.partial(jax.jit, static_argnames="cfg")(impl))
    prim.def_abstract_eval(abstract_eval)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))
    batching.primitive_batchers[prim] = functools.partial(_batch_rule, prim)
    return prim


def _lse_aval(q):
    return jax.core.ShapedArray((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)


def _out_aval(q, v):
    return jax.core.ShapedArray(q.shape[:-1] + v.shape[-1:], q.dtype)


# Operands: fwd_p (q, k, v), jvp_p (q, k, v, q̇, k̇, v̇), tangent_p (q, k, v, O, lse, q̇, k̇, v̇),
# each followed by the [B, S] int32 segment ids when there are any.
fwd_p = _primitive("flash_attention_fwd", _forward_impl,
                   lambda q, k, v, *_, cfg: [_out_aval(q, v), _lse_aval(q)])
jvp_p = _primitive("flash_attention_jvp", _jvp_impl,
                   lambda q, k, v, *_, cfg: [_out_aval(q, v)] * 2)
tangent_p = _primitive("flash_attention_tangent", _tangent_impl,
                       lambda q, k, v, *_, cfg: [_out_aval(q, v)])


def _tangent_transpose(cotangents, q, k, v, out, lse, q_dot, k_dot, v_dot, *segments,
                       cfg: Config):
    """Ȯ is linear in (q̇, k̇, v̇); its transpose maps dO to attention's VJP: the flash backward."""
    (d_out,) = cotangents
    tangents = (q_dot, k_dot, v_dot)
    if type(d_out) is ad.Zero:
        return [None] * (8 + len(segments))
    grads = _backward(cfg, q, k, v, out, lse, ad.instantiate_zeros(d_out), segments)
    return [None] * 5 + [g if ad.is_undefined_primal(t) else None
                         for g, t in zip(grads, tangents)] + [None] * len(segments)


ad.primitive_transposes[tangent_p] = _tangent_transpose


def _jvp_partial_eval(trace, *tracers, cfg: Config):
    """Linearization with known primals and unknown tangents: the forward now, the linear
    tangent part staged (so grad transposes it into the flash backward)."""
    known = [t.pval.is_known() for t in tracers]
    if all(known) or not all(known[:3] + known[6:]):
        return trace.default_process_primitive(jvp_p, tracers, {"cfg": cfg})
    primals = [t.pval.get_known() for t in tracers[:3] + tracers[6:]]
    out, lse = fwd_p.bind(*primals, cfg=cfg)
    out_dot = trace.default_process_primitive(
        tangent_p, (*tracers[:3], trace.new_const(out), trace.new_const(lse), *tracers[3:]),
        {"cfg": cfg})
    return [trace.new_const(out), *out_dot]


pe.custom_partial_eval_rules[jvp_p] = _jvp_partial_eval


def _jvp_partial_eval_custom(saveable, unks_in, inst_in, eqn):
    """The same split for partial_eval_jaxpr_custom (`jax.checkpoint`, scan): O and lse are
    saved as residuals, linear in S like q, k and v."""
    del saveable
    residuals = [v for v, inst in zip(eqn.invars, inst_in) if not inst]
    if not any(unks_in):
        return eqn, None, [False, False], [False, False], []
    if any(unks_in[:3] + unks_in[6:]):
        return None, eqn, [True, True], [True, True], residuals
    q = eqn.invars[0]
    lse = jex_core.Var(_lse_aval(q.aval))
    out, out_dot = eqn.outvars
    known = eqn.replace(primitive=fwd_p, invars=eqn.invars[:3] + eqn.invars[6:],
                        outvars=[out, lse])
    staged = eqn.replace(primitive=tangent_p, invars=[*eqn.invars[:3], out, lse, *eqn.invars[3:]],
                         outvars=[out_dot])
    residuals = [v for v, inst in zip(eqn.invars, inst_in) if not inst] + [out, lse]
    return known, staged, [False, True], [False, True], residuals


pe.partial_eval_jaxpr_custom_rules[jvp_p] = _jvp_partial_eval_custom


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _attention(cfg: Config, q, k, v, *segments):
    return fwd_p.bind(q, k, v, *segments, cfg=cfg)[0]


@_attention.defjvp
def _attention_jvp(cfg: Config, primals, tangents):
    """Segment ids (integers: float0 tangents) pass through as primals."""
    out, out_dot = jvp_p.bind(*primals[:3], *tangents[:3], *primals[3:], cfg=cfg)
    return out, out_dot


# ----------------------------------------------------------------------------------------------
# API.


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_args(q, k, v, causal: bool, segment_ids, window) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise DistillError(f"q, k, v must be [batch, seq, heads, head_dim]; got shapes {q.shape},"
                           f" {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise DistillError(f"k {k.shape} and v {v.shape} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise DistillError(f"q {q.shape} and k {k.shape} must agree in batch, heads and head_dim"
                           " (grouped-query attention: repeat k and v over the groups first)")
    if causal and q.shape[1] != k.shape[1]:
        raise DistillError(f"causal attention needs as many queries as keys; got {q.shape[1]} and"
                           f" {k.shape[1]}")
    if not (jnp.issubdtype(q.dtype, jnp.floating) and q.dtype == k.dtype == v.dtype):
        raise DistillError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype},"
                           f" {v.dtype}")
    if segment_ids is not None and (
            jnp.shape(segment_ids) != q.shape[:2] or q.shape[1] != k.shape[1]
            or not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer)):
        raise DistillError(f"segment_ids must be integers of shape [batch, seq] = {q.shape[:2]}"
                           f" for self-attention (as many keys as queries); got"
                           f" {jnp.shape(segment_ids)} {jnp.result_type(segment_ids)} with"
                           f" {k.shape[1]} keys")
    if window is not None and not (causal and isinstance(window, int) and window >= 1):
        raise DistillError(f"window={window!r} must be a positive int, and needs causal=True")


def _resolve(implementation: str) -> tuple[str, bool, str]:
    """(implementation, interpret, block family) for a requested implementation."""
    if implementation not in IMPLEMENTATIONS:
        raise DistillError(f"unknown implementation {implementation!r}; choose one of"
                           f" {', '.join(IMPLEMENTATIONS)}")
    backend = jax.default_backend()
    if implementation == "auto":
        implementation = "pallas" if backend in ("gpu", "tpu") else "xla"
    if implementation == "xla":
        return "xla", False, "xla"
    if implementation == "pallas_interpret":
        return "pallas", True, "gpu"
    if backend not in ("gpu", "tpu"):
        raise DistillError(f"implementation='pallas' needs a GPU or TPU, not {backend!r}; use"
                           " 'pallas_interpret' to run the kernels on the CPU, or 'xla'")
    return "pallas", False, backend


def _check_blocks(family: str, seq_q: int, seq_k: int, head_dim: int, block_q: int,
                  block_k: int) -> None:
    for name, block, seq in (("block_q", block_q, seq_q), ("block_k", block_k, seq_k)):
        if block <= 0 or seq % block:
            raise DistillError(f"{name}={block} must be a positive divisor of the sequence length"
                               f" {seq}; pad the sequence or pick another block")
        if family == "gpu" and not (_is_power_of_two(block) and block >= 16):
            raise DistillError(f"{name}={block}: Pallas GPU (Triton) blocks must be powers of two"
                               " and at least 16")
        if family == "tpu" and block % 128:
            raise DistillError(f"{name}={block}: Pallas TPU blocks must be multiples of 128")
    if family == "gpu" and not (_is_power_of_two(head_dim) and head_dim >= 16):
        raise DistillError(f"head_dim={head_dim}: Pallas GPU needs a power of two of at least 16;"
                           " use implementation='xla'")


def _default_block(family: str, axis: int, seq: int, rows: int, row_bytes: int) -> int:
    """Pallas: the family's default, halved on GPU for rows wider than 256 bytes (D=128 in
    float32 overflowed the H200's 227 KiB of shared memory at 64). XLA: the largest power of two
    up to 512 that divides S and keeps one [rows=B·H, block, block] float32 tile within 16 MiB."""
    block = _DEFAULT_BLOCKS[family][axis]
    if family == "gpu" and row_bytes > 256:
        return block // 2
    if family != "xla":
        return block
    while block > 16 and rows * block * block * 4 > _XLA_TILE_BYTES:
        block //= 2
    return math.gcd(seq, block)


def flash_attention(
    q: Float[Array, "batch seq_q heads head_dim"],
    k: Float[Array, "batch seq_k heads head_dim"],
    v: Float[Array, "batch seq_k heads head_dim"],
    *,
    causal: bool = False,
    implementation: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
    segment_ids: Int[Array, "batch seq"] | None = None,
    window: int | None = None,
) -> Float[Array, "batch seq_q heads head_dim"]:
    """softmax(q·kᵀ/√D [masked])·v per batch and head, in q's dtype.

    `jax.jvp` runs one fused pass for (O, Ȯ); `jax.grad` runs the flash forward and backward;
    `jax.vmap` and `jax.jit` work. q may have another sequence length than k and v unless
    `causal` (causal query i sees keys 0..i) or `segment_ids`. `segment_ids` (packed rows,
    self-attention): query i sees key j only if both have the same segment id and it is not 0;
    queries of segment 0 (padding) see nothing and output 0 (gradients through them are 0).
    `window` (causal only): query i sees keys i − window < j ≤ i, as `sliding_window` in Hugging
    Face models; K/V blocks wholly outside it are skipped. `implementation`: "auto" (Pallas on
    GPU/TPU, the chunked XLA path elsewhere), "xla", "pallas", or "pallas_interpret" (the Pallas
    kernels in interpret mode, for CPU tests). Blocks must divide the sequence lengths; Pallas
    GPU blocks are powers of two (default 64, 32 when D·itemsize > 256 bytes), Pallas TPU blocks
    multiples of 128 (default 128), XLA blocks any divisor (default: a power of two up to 512
    dividing S, smaller when B·H is large).
    """
    _check_args(q, k, v, causal, segment_ids, window)
    implementation, interpret, family = _resolve(implementation)
    rows, row_bytes = q.shape[0] * q.shape[2], q.shape[3] * q.dtype.itemsize
    block_q = block_q or _default_block(family, 0, q.shape[1], rows, row_bytes)
    block_k = block_k or _default_block(family, 1, k.shape[1], rows, row_bytes)
    _check_blocks(family, q.shape[1], k.shape[1], q.shape[3], block_q, block_k)
    cfg = Config(bool(causal), implementation, int(block_q), int(block_k), interpret, window)
    segments = () if segment_ids is None else (jnp.asarray(segment_ids, jnp.int32),)
    return _attention(cfg, q, k, v, *segments)


def attention_reference(q, k, v, causal: bool = False, *, segment_ids=None,
                        window: int | None = None):
    """The naive computation the kernels must equal: [B, H, S, S] scores materialized. Masks as
    `flash_attention`'s, written out independently of `block_keep`; queries that see no key
    output 0."""
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=dtype)
    scores = scores / math.sqrt(q.shape[-1])
    if causal or window is not None or segment_ids is not None:
        query, key = jnp.arange(q.shape[1])[:, None], jnp.arange(k.shape[1])[None, :]
        keep = jnp.tril(jnp.ones(scores.shape[-2:], bool)) if causal else jnp.ones((), bool)
        if window is not None:
            keep = keep & (key > query - window)
        if segment_ids is not None:
            segment_ids = segment_ids[:, None]  # [B, 1, S]: a head axis to broadcast over
            keep = keep & (segment_ids[..., :, None] == segment_ids[..., None, :]) \
                & (segment_ids[..., None, :] != 0)
        # A row that sees no key gets zero scores: a finite softmax and finite gradients, then
        # zero probabilities (a double where, so no NaN flows back from the masked branch).
        seen = jnp.any(keep, axis=-1, keepdims=True)
        scores = jnp.where(seen, jnp.where(keep, scores, -jnp.inf), 0.0)
        probs = jnp.where(seen, jax.nn.softmax(scores, axis=-1), 0.0)
    else:
        probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(dtype)).astype(q.dtype)
