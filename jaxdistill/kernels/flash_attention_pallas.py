"""Pallas kernels for `flash_attention`: forward, fused forward+JVP, and the two backward halves.

All work on [B, H, S, D] arrays with grid (B, H, blocks). A query-block kernel holds its
[block_q, D] rows and walks the K/V rows of its (batch, head) block_k at a time; the K/V-block
kernel of the backward (dk, dv) walks the query rows instead. The block arithmetic is the XLA
path's (`flash_attention.forward_step`, `jvp_step`, `backward_scores`), so both paths compute
the same recurrences and one mask, `block_keep`. A causal mask or a window skips the blocks
wholly outside it (the loop bounds are `kv_block_range`, `q_block_range`) and masks every
block it reads with `jnp.where`; segment ids ([B, 1, S], a whole row per program) mask the
blocks, each slicing its own ids. Sequence lengths must be multiples of the blocks (checked
before tracing), so no block is ever partial and interpret mode's NaN padding never enters.
`interpret=True` runs on the CPU and checks the math only. Lowered through Triton and checked
against the float64 reference on an H200 (jax 0.11.2; D = 32 to 256, causal or not, float32
and bf16; segment ids and windows in interpret mode only); never yet run on a TPU (Mosaic).
The whole K/V (or Q) sequence of one head is one block in global memory on GPU, and in VMEM on
TPU, which bounds the sequence a TPU core can take (about 1M elements of K plus V per head at
bf16).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

# Imported by name: the package exports the function `flash_attention`, which shadows this
# module's name as an attribute of `jaxdistill.kernels`.
from jaxdistill.kernels.flash_attention import (
    backward_scores,
    block_keep,
    dot_nn,
    dot_tn,
    forward_finish,
    forward_init,
    forward_step,
    jvp_finish,
    jvp_init,
    jvp_step,
    kv_block_range,
    q_block_range,
)


def _rows(block: int, index):
    return pl.ds(index * block, block)


def _segments(seg_ref, block: int, index):
    """The segment ids of one block of rows, or None without segments."""
    return None if seg_ref is None else seg_ref[0, _rows(block, index)]


def _specs(shape, block: int):
    """BlockSpecs for a [B, H, S, D] array: one block of rows, or the whole sequence."""
    _, _, seq, dim = shape
    rows = pl.BlockSpec((None, None, block, dim), lambda b, h, i: (b, h, i, 0))
    whole = pl.BlockSpec((None, None, seq, dim), lambda b, h, i: (b, h, 0, 0))
    return rows, whole


def _stats_specs(seq: int, block: int):
    rows = pl.BlockSpec((None, None, block), lambda b, h, i: (b, h, i))
    whole = pl.BlockSpec((None, None, seq), lambda b, h, i: (b, h, 0))
    return rows, whole


def _forward_kernel(cfg, seg_ref, q_ref, k_ref, v_ref, out_ref, lse_ref):
    i, q = pl.program_id(2), q_ref[...]
    scale, q_seg = q.shape[-1] ** -0.5, _segments(seg_ref, cfg.block_q, i)

    def body(j, state):
        rows = _rows(cfg.block_k, j)
        keep = block_keep(cfg, i, j, q_seg, _segments(seg_ref, cfg.block_k, j))
        return forward_step(state, q, k_ref[rows, :], v_ref[rows, :], scale, keep)

    blocks = kv_block_range(cfg, i, k_ref.shape[0] // cfg.block_k)
    out, lse = forward_finish(lax.fori_loop(*blocks, body, forward_init(q.shape)))
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def _jvp_kernel(cfg, seg_ref, q_ref, k_ref, v_ref, q_dot_ref, k_dot_ref, v_dot_ref, out_ref,
                out_dot_ref):
    i, q, q_dot = pl.program_id(2), q_ref[...], q_dot_ref[...]
    scale, q_seg = q.shape[-1] ** -0.5, _segments(seg_ref, cfg.block_q, i)

    def body(j, state):
        rows = _rows(cfg.block_k, j)
        keep = block_keep(cfg, i, j, q_seg, _segments(seg_ref, cfg.block_k, j))
        return jvp_step(state, q, k_ref[rows, :], v_ref[rows, :], q_dot, k_dot_ref[rows, :],
                        v_dot_ref[rows, :], scale, keep)

    blocks = kv_block_range(cfg, i, k_ref.shape[0] // cfg.block_k)
    out, out_dot = jvp_finish(lax.fori_loop(*blocks, body, jvp_init(q.shape)))
    out_ref[...] = out.astype(out_ref.dtype)
    out_dot_ref[...] = out_dot.astype(out_dot_ref.dtype)


def _dq_kernel(cfg, seg_ref, q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, d_q_ref):
    i, q, d_out = pl.program_id(2), q_ref[...], d_out_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    scale, q_seg = q.shape[-1] ** -0.5, _segments(seg_ref, cfg.block_q, i)

    def body(j, d_q):
        rows = _rows(cfg.block_k, j)
        k = k_ref[rows, :]
        keep = block_keep(cfg, i, j, q_seg, _segments(seg_ref, cfg.block_k, j))
        _, d_s = backward_scores(q, k, v_ref[rows, :], d_out, lse, delta, scale, keep)
        return d_q + dot_nn(d_s.astype(k.dtype), k) * scale

    blocks = kv_block_range(cfg, i, k_ref.shape[0] // cfg.block_k)
    d_q = lax.fori_loop(*blocks, body, jnp.zeros(q.shape, jnp.float32))
    d_q_ref[...] = d_q.astype(d_q_ref.dtype)


def _dkv_kernel(cfg, seg_ref, q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, d_k_ref,
                d_v_ref):
    j, k, v = pl.program_id(2), k_ref[...], v_ref[...]
    scale, k_seg = k.shape[-1] ** -0.5, _segments(seg_ref, cfg.block_k, j)

    def body(i, grads):
        rows = _rows(cfg.block_q, i)
        q, d_out = q_ref[rows, :], d_out_ref[rows, :]
        keep = block_keep(cfg, i, j, _segments(seg_ref, cfg.block_q, i), k_seg)
        p, d_s = backward_scores(q, k, v, d_out, lse_ref[rows], delta_ref[rows], scale, keep)
        return (grads[0] + dot_tn(d_s.astype(q.dtype), q) * scale,
                grads[1] + dot_tn(p.astype(d_out.dtype), d_out))

    blocks = q_block_range(cfg, j, q_ref.shape[0] // cfg.block_q)
    zeros = jnp.zeros(k.shape, jnp.float32)
    d_k, d_v = lax.fori_loop(*blocks, body, (zeros, zeros))
    d_k_ref[...] = d_k.astype(d_k_ref.dtype)
    d_v_ref[...] = d_v.astype(d_v_ref.dtype)


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, segments, *args):
    """pallas_call of kernel(cfg, seg_ref, *refs); segments [B, 1, S] come whole per batch row
    as the first input, or seg_ref is None."""
    if segments is None:
        kernel = functools.partial(kernel, cfg, None)
    else:
        kernel = functools.partial(kernel, cfg)
        in_specs = [pl.BlockSpec((None, 1, segments.shape[2]), lambda b, h, i: (b, 0, 0)),
                    *in_specs]
        args = (segments, *args)
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, interpret=cfg.interpret)(*args)


def forward(cfg, q, k, v, segments):
    """(O, lse) with grid (B, H, S_q/block_q)."""
    b, h, seq_q, _ = q.shape
    q_rows, _ = _specs(q.shape, cfg.block_q)
    _, kv_whole = _specs(k.shape, cfg.block_k)
    lse_rows, _ = _stats_specs(seq_q, cfg.block_q)
    return _call(_forward_kernel, cfg, (b, h, seq_q // cfg.block_q),
                 [q_rows, kv_whole, kv_whole], [q_rows, lse_rows],
                 [jax.ShapeDtypeStruct(q.shape, q.dtype),
                  jax.ShapeDtypeStruct((b, h, seq_q), jnp.float32)], segments, q, k, v)


def jvp(cfg, q, k, v, q_dot, k_dot, v_dot, segments):
    """(O, Ȯ) in one pass, grid (B, H, S_q/block_q)."""
    b, h, seq_q, _ = q.shape
    q_rows, _ = _specs(q.shape, cfg.block_q)
    _, kv_whole = _specs(k.shape, cfg.block_k)
    out = jax.ShapeDtypeStruct(q.shape, q.dtype)
    return _call(_jvp_kernel, cfg, (b, h, seq_q // cfg.block_q),
                 [q_rows, kv_whole, kv_whole, q_rows, kv_whole, kv_whole], [q_rows, q_rows],
                 [out, out], segments, q, k, v, q_dot, k_dot, v_dot)


def backward(cfg, q, k, v, out, lse, d_out, segments):
    """(dq, dk, dv): one kernel per query block for dq, one per K/V block for dk and dv."""
    b, h, seq_q, _ = q.shape
    seq_k = k.shape[2]
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    q_rows, q_whole = _specs(q.shape, cfg.block_q)
    kv_rows, kv_whole = _specs(k.shape, cfg.block_k)
    stats_rows, stats_whole = _stats_specs(seq_q, cfg.block_q)
    d_q = _call(_dq_kernel, cfg, (b, h, seq_q // cfg.block_q),
                [q_rows, kv_whole, kv_whole, q_rows, stats_rows, stats_rows], q_rows,
                jax.ShapeDtypeStruct(q.shape, q.dtype), segments, q, k, v, d_out, lse, delta)
    d_k, d_v = _call(_dkv_kernel, cfg, (b, h, seq_k // cfg.block_k),
                     [q_whole, kv_rows, kv_rows, q_whole, stats_whole, stats_whole],
                     [kv_rows, kv_rows], [jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2, segments,
                     q, k, v, d_out, lse, delta)
    return d_q, d_k, d_v
