"""Pallas kernels for `fused_linear_divergence`: the heads streamed a vocabulary block at a time.

Two kernels, so that neither needs a reduction across its own grid:
- per token block (grid over tokens): three sweeps over the vocabulary blocks of both heads.
  (1) online log-sum-exps of student and teacher; (2) the value Σv and the score sum Σw, which
  need both final log-sum-exps (a generalized JSD mixes the two distributions); (3) the
  gradient of the student's logits, block by block, multiplied straight into dℓ/dh_s.
- per vocabulary block (grid over vocabulary): dℓ/dW_s for those columns, recomputing each token
  block's logits from the per-token statistics the first kernel saved (Cut Cross-Entropy's
  recompute-instead-of-store).
Only [block_tokens, block_vocab] logits ever exist. Partial blocks are padded and masked with
`jnp.where` (interpret mode fills out-of-bounds reads with NaN, so nothing is multiplied by a
mask). Runs on CPU with `interpret=True`, which checks the math, not GPU/TPU tiling limits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxdistill.kernels import fused_divergence as fused

_DEFAULT_BLOCK_TOKENS = 64


def _block_logits(spec, student_hidden, teacher_hidden, student_cols, teacher_cols, first_col,
                  vocab):
    """Student and teacher log-space logits of one block, -inf past the real vocabulary."""
    valid = first_col + jax.lax.broadcasted_iota(jnp.int32, (1, student_cols.shape[1]), 1) < vocab
    student = fused.logits(student_hidden, student_cols, spec.divergence.temperature)
    teacher = fused.logits(teacher_hidden, teacher_cols, spec.divergence.temperature)
    return jnp.where(valid, student, -jnp.inf), jnp.where(valid, teacher, -jnp.inf), valid


def _grad_logits(spec, student, teacher, valid, lse_student, lse_teacher, score_sum, weights):
    """dℓ/dz_s for one block, weighted per token (z_s here are the unscaled logits)."""
    log_q, log_p = student - lse_student[:, None], teacher - lse_teacher[:, None]
    _, scores = fused.entry_terms(spec.divergence, log_p, log_q)
    weights = weights / spec.divergence.temperature
    grad = (scores - jnp.exp(log_q) * score_sum[:, None]) * weights[:, None]
    return jnp.where(valid, grad, 0.0)


def _token_kernel(spec, vocab, with_grads, student_hidden_ref, student_head_ref,
                  teacher_hidden_ref, teacher_head_ref, weights_ref, value_ref, lse_student_ref,
                  lse_teacher_ref, score_sum_ref, *grad_hidden_ref):
    block_vocab = spec.block_vocab
    num_blocks = student_head_ref.shape[1] // block_vocab
    student_hidden, teacher_hidden = student_hidden_ref[...], teacher_hidden_ref[...]
    rows = student_hidden.shape[0]

    def block(j):
        cols = pl.ds(j * block_vocab, block_vocab)
        return _block_logits(spec, student_hidden, teacher_hidden, student_head_ref[:, cols],
                             teacher_head_ref[:, cols], j * block_vocab, vocab)

    def online_lse(j, carry):
        student, teacher, _ = block(j)
        updated = []
        for logits, (running_max, running_sum) in zip((student, teacher), carry):
            new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
            rescaled = running_sum * jnp.exp(running_max - new_max)
            updated.append((new_max, rescaled + jnp.sum(jnp.exp(logits - new_max[:, None]), 1)))
        return tuple(updated)

    start = (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32))
    (max_s, sum_s), (max_t, sum_t) = jax.lax.fori_loop(0, num_blocks, online_lse, (start, start))
    lse_student, lse_teacher = max_s + jnp.log(sum_s), max_t + jnp.log(sum_t)

    def value_and_scores(j, carry):
        student, teacher, valid = block(j)
        values, scores = fused.entry_terms(
            spec.divergence, teacher - lse_teacher[:, None], student - lse_student[:, None])
        return (carry[0] + jnp.sum(jnp.where(valid, values, 0.0), 1),
                carry[1] + jnp.sum(jnp.where(valid, scores, 0.0), 1))

    zeros = jnp.zeros((rows,), jnp.float32)
    value, score_sum = jax.lax.fori_loop(0, num_blocks, value_and_scores, (zeros, zeros))
    weights = weights_ref[...]
    value_ref[...] = value * weights
    lse_student_ref[...], lse_teacher_ref[...] = lse_student, lse_teacher
    score_sum_ref[...] = score_sum
    if not with_grads:
        return

    def grad_hidden(j, acc):
        student, teacher, valid = block(j)
        grad = _grad_logits(spec, student, teacher, valid, lse_student, lse_teacher, score_sum,
                            weights)
        cols = student_head_ref[:, pl.ds(j * block_vocab, block_vocab)]
        return acc + jnp.dot(grad.astype(cols.dtype), cols.T, preferred_element_type=jnp.float32)

    grad_hidden_ref[0][...] = jax.lax.fori_loop(
        0, num_blocks, grad_hidden, jnp.zeros(student_hidden.shape, jnp.float32))


def _vocab_kernel(spec, vocab, block_tokens, student_hidden_ref, student_cols_ref,
                  teacher_hidden_ref, teacher_cols_ref, lse_student_ref, lse_teacher_ref,
                  score_sum_ref, weights_ref, grad_head_ref):
    first_col = pl.program_id(0) * spec.block_vocab
    student_cols, teacher_cols = student_cols_ref[...], teacher_cols_ref[...]

    def accumulate(i, acc):
        rows = pl.ds(i * block_tokens, block_tokens)
        student_hidden = student_hidden_ref[rows, :]
        student, teacher, valid = _block_logits(
            spec, student_hidden, teacher_hidden_ref[rows, :], student_cols, teacher_cols,
            first_col, vocab)
        grad = _grad_logits(spec, student, teacher, valid, lse_student_ref[rows],
                            lse_teacher_ref[rows], score_sum_ref[rows], weights_ref[rows])
        return acc + jnp.dot(student_hidden.T, grad.astype(student_hidden.dtype),
                             preferred_element_type=jnp.float32)

    num_token_blocks = student_hidden_ref.shape[0] // block_tokens
    grad_head_ref[...] = jax.lax.fori_loop(
        0, num_token_blocks, accumulate, jnp.zeros(grad_head_ref.shape, jnp.float32))


def _pad_to(x, axis: int, multiple: int):
    padding = [(0, 0)] * x.ndim
    padding[axis] = (0, -x.shape[axis] % multiple)
    return jnp.pad(x, padding)


def forward(spec, student_hidden, student_head, teacher_hidden, teacher_head, weights,
            with_grads: bool = True):
    """(Σ weighted value, dℓ/dh_s, dℓ/dW_s) like the XLA path, through the two kernels."""
    num_tokens, vocab = student_hidden.shape[0], student_head.shape[1]
    block_tokens, block_vocab = spec.block_tokens or _DEFAULT_BLOCK_TOKENS, spec.block_vocab
    student_hidden, teacher_hidden, weights = (
        _pad_to(x, 0, block_tokens) for x in (student_hidden, teacher_hidden, weights))
    student_head, teacher_head = (_pad_to(x, 1, block_vocab) for x in (student_head, teacher_head))
    padded_tokens, padded_vocab = student_hidden.shape[0], student_head.shape[1]
    width, teacher_width = student_hidden.shape[1], teacher_hidden.shape[1]

    def whole(shape):
        return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))

    token_rows = pl.BlockSpec((block_tokens,), lambda i: (i,))
    per_token = jax.ShapeDtypeStruct((padded_tokens,), jnp.float32)
    out_shape = [per_token] * 4
    out_specs = [token_rows] * 4
    if with_grads:
        out_shape.append(jax.ShapeDtypeStruct((padded_tokens, width), jnp.float32))
        out_specs.append(pl.BlockSpec((block_tokens, width), lambda i: (i, 0)))
    value, lse_student, lse_teacher, score_sum, *grad_hidden = pl.pallas_call(
        functools.partial(_token_kernel, spec, vocab, with_grads),
        grid=(padded_tokens // block_tokens,),
        in_specs=[pl.BlockSpec((block_tokens, width), lambda i: (i, 0)),
                  whole((width, padded_vocab)),
                  pl.BlockSpec((block_tokens, teacher_width), lambda i: (i, 0)),
                  whole((teacher_width, padded_vocab)), token_rows],
        out_specs=out_specs, out_shape=out_shape, interpret=spec.interpret,
    )(student_hidden, student_head, teacher_hidden, teacher_head, weights)
    if not with_grads:
        return jnp.sum(value), None, None

    grad_head = pl.pallas_call(
        functools.partial(_vocab_kernel, spec, vocab, block_tokens),
        grid=(padded_vocab // block_vocab,),
        in_specs=[whole((padded_tokens, width)),
                  pl.BlockSpec((width, block_vocab), lambda j: (0, j)),
                  whole((padded_tokens, teacher_width)),
                  pl.BlockSpec((teacher_width, block_vocab), lambda j: (0, j)),
                  *[whole((padded_tokens,))] * 4],
        out_specs=pl.BlockSpec((width, block_vocab), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((width, padded_vocab), jnp.float32),
        interpret=spec.interpret,
    )(student_hidden, student_head, teacher_hidden, teacher_head, lse_student, lse_teacher,
      score_sum, weights)
    return jnp.sum(value), grad_hidden[0][:num_tokens], grad_head[:, :vocab]
