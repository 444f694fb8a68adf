"""Pallas kernels for `flash_attention`: forward, fused forward+JVP, and the two backward halves.

All work on [B, H, S, D] arrays with grid (B, H, blocks). A query-block kernel holds its
[block_q, D] rows and walks the K/V rows of its (batch, head) block_k at a time; the K/V-block
kernel of the backward (dk, dv) walks the query rows instead. The block arithmetic is the XLA
path's (`flash_attention.forward_step`, `jvp_step`, `backward_scores`), so both paths compute
the same recurrences. A causal mask skips the blocks above the diagonal (the loop bounds stop
at it) and masks every block it reads with `jnp.where`. Sequence lengths must be multiples of
the blocks (checked before tracing), so no block is ever partial and interpret mode's NaN
padding never enters. `interpret=True` runs on the CPU and checks the math only. Lowered
through Triton and checked against the float64 reference on an H200 (jax 0.11.2; D = 32 to
256, causal or not, float32 and bf16); never yet run on a TPU (Mosaic). The whole K/V
(or Q) sequence of one head is one block in global memory on GPU, and in VMEM on TPU, which
bounds the sequence a TPU core can take (about 1M elements of K plus V per head at bf16).
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
    causal_keep,
    causal_kv_blocks,
    dot_nn,
    dot_tn,
    forward_finish,
    forward_init,
    forward_step,
    jvp_finish,
    jvp_init,
    jvp_step,
)


def _keep(cfg, q_block, kv_block):
    if not cfg.causal:
        return None
    return causal_keep(q_block * cfg.block_q, kv_block * cfg.block_k, cfg.block_q,
                          cfg.block_k)


def _rows(block: int, index):
    return pl.ds(index * block, block)


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


def _forward_kernel(cfg, q_ref, k_ref, v_ref, out_ref, lse_ref):
    i, q = pl.program_id(2), q_ref[...]
    scale = q.shape[-1] ** -0.5

    def body(j, state):
        rows = _rows(cfg.block_k, j)
        return forward_step(state, q, k_ref[rows, :], v_ref[rows, :], scale, _keep(cfg, i, j))

    num_kv = causal_kv_blocks(cfg, i, k_ref.shape[0] // cfg.block_k)
    out, lse = forward_finish(lax.fori_loop(0, num_kv, body, forward_init(q.shape)))
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def _jvp_kernel(cfg, q_ref, k_ref, v_ref, q_dot_ref, k_dot_ref, v_dot_ref, out_ref,
                out_dot_ref):
    i, q, q_dot = pl.program_id(2), q_ref[...], q_dot_ref[...]
    scale = q.shape[-1] ** -0.5

    def body(j, state):
        rows = _rows(cfg.block_k, j)
        return jvp_step(state, q, k_ref[rows, :], v_ref[rows, :], q_dot, k_dot_ref[rows, :],
                           v_dot_ref[rows, :], scale, _keep(cfg, i, j))

    num_kv = causal_kv_blocks(cfg, i, k_ref.shape[0] // cfg.block_k)
    out, out_dot = jvp_finish(lax.fori_loop(0, num_kv, body, jvp_init(q.shape)))
    out_ref[...] = out.astype(out_ref.dtype)
    out_dot_ref[...] = out_dot.astype(out_dot_ref.dtype)


def _dq_kernel(cfg, q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, d_q_ref):
    i, q, d_out = pl.program_id(2), q_ref[...], d_out_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    scale = q.shape[-1] ** -0.5

    def body(j, d_q):
        rows = _rows(cfg.block_k, j)
        k = k_ref[rows, :]
        _, d_s = backward_scores(q, k, v_ref[rows, :], d_out, lse, delta, scale,
                                    _keep(cfg, i, j))
        return d_q + dot_nn(d_s.astype(k.dtype), k) * scale

    num_kv = causal_kv_blocks(cfg, i, k_ref.shape[0] // cfg.block_k)
    d_q = lax.fori_loop(0, num_kv, body, jnp.zeros(q.shape, jnp.float32))
    d_q_ref[...] = d_q.astype(d_q_ref.dtype)


def _dkv_kernel(cfg, q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, d_k_ref, d_v_ref):
    j, k, v = pl.program_id(2), k_ref[...], v_ref[...]
    scale = k.shape[-1] ** -0.5

    def body(i, grads):
        rows = _rows(cfg.block_q, i)
        q, d_out = q_ref[rows, :], d_out_ref[rows, :]
        p, d_s = backward_scores(q, k, v, d_out, lse_ref[rows], delta_ref[rows], scale,
                                    _keep(cfg, i, j))
        return (grads[0] + dot_tn(d_s.astype(q.dtype), q) * scale,
                grads[1] + dot_tn(p.astype(d_out.dtype), d_out))

    first = lax.div(j * cfg.block_k, cfg.block_q) if cfg.causal else 0
    zeros = jnp.zeros(k.shape, jnp.float32)
    d_k, d_v = lax.fori_loop(first, q_ref.shape[0] // cfg.block_q, body, (zeros, zeros))
    d_k_ref[...] = d_k.astype(d_k_ref.dtype)
    d_v_ref[...] = d_v.astype(d_v_ref.dtype)


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, *args):
    return pl.pallas_call(functools.partial(kernel, cfg), grid=grid, in_specs=in_specs,
                          out_specs=out_specs, out_shape=out_shape,
                          interpret=cfg.interpret)(*args)


def forward(cfg, q, k, v):
    """(O, lse) with grid (B, H, S_q/block_q)."""
    b, h, seq_q, _ = q.shape
    q_rows, _ = _specs(q.shape, cfg.block_q)
    _, kv_whole = _specs(k.shape, cfg.block_k)
    lse_rows, _ = _stats_specs(seq_q, cfg.block_q)
    return _call(_forward_kernel, cfg, (b, h, seq_q // cfg.block_q),
                 [q_rows, kv_whole, kv_whole], [q_rows, lse_rows],
                 [jax.ShapeDtypeStruct(q.shape, q.dtype),
                  jax.ShapeDtypeStruct((b, h, seq_q), jnp.float32)], q, k, v)


def jvp(cfg, q, k, v, q_dot, k_dot, v_dot):
    """(O, Ȯ) in one pass, grid (B, H, S_q/block_q)."""
    b, h, seq_q, _ = q.shape
    q_rows, _ = _specs(q.shape, cfg.block_q)
    _, kv_whole = _specs(k.shape, cfg.block_k)
    out = jax.ShapeDtypeStruct(q.shape, q.dtype)
    return _call(_jvp_kernel, cfg, (b, h, seq_q // cfg.block_q),
                 [q_rows, kv_whole, kv_whole, q_rows, kv_whole, kv_whole], [q_rows, q_rows],
                 [out, out], q, k, v, q_dot, k_dot, v_dot)


def backward(cfg, q, k, v, out, lse, d_out):
    """(dq, dk, dv): one kernel per query block for dq, one per K/V block for dk and dv."""
    b, h, seq_q, _ = q.shape
    seq_k = k.shape[2]
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    q_rows, q_whole = _specs(q.shape, cfg.block_q)
    kv_rows, kv_whole = _specs(k.shape, cfg.block_k)
    stats_rows, stats_whole = _stats_specs(seq_q, cfg.block_q)
    d_q = _call(_dq_kernel, cfg, (b, h, seq_q // cfg.block_q),
                [q_rows, kv_whole, kv_whole, q_rows, stats_rows, stats_rows], q_rows,
                jax.ShapeDtypeStruct(q.shape, q.dtype), q, k, v, d_out, lse, delta)
    d_k, d_v = _call(_dkv_kernel, cfg, (b, h, seq_k // cfg.block_k),
                     [q_whole, kv_rows, kv_rows, q_whole, stats_whole, stats_whole],
                     [kv_rows, kv_rows],
                     [jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2, q, k, v, d_out, lse, delta)
    return d_q, d_k, d_v
