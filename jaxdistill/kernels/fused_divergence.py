"""Divergence between two LM heads' distributions without materializing [N, V] logits.

    fused_linear_divergence(h_s, W_s, h_t, W_t, kind, temperature=..., mask=...)
      == losses.divergence(h_s @ W_s, h_t @ W_t, kind, temperature=..., mask=...)

differentiable in the student's hidden states and head. The tokens are processed a block at a
time, so the peak temporary memory is O(block·V) instead of the O(N·V) that materialized logits,
their softmaxes and their gradients need. The student's gradients are computed in the same pass
as the value (they are what the backward pass returns, scaled by the incoming cotangent), so
nothing is recomputed.

Every divergence reduces to one recipe per vocabulary entry: with log P and log Q known, a value
v and a score w = q·∂ℓ/∂q give ℓ = Σ v and ∂ℓ/∂z_s = (w − q·Σw) / T for student logits z_s. Once
both log-sum-exps are known a block of the vocabulary can be processed on its own, which is what
lets the Pallas kernels (`fused_divergence_pallas`) stream the head block by block.

Two implementations share that recipe: a chunked XLA path (the default everywhere; XLA
partitions it like any jitted code, tokens over data and the vocabulary over tensor), and the
Pallas kernels (`implementation="pallas"`; `interpret=True` runs them on CPU for tests). On an
H200 (Triton, results/perf.md) the Pallas kernels lower and match the float64 reference, but
only at small blocks (16 tokens × 32 vocabulary columns at width 256): they hold the full
hidden width of both models' tiles, and the gradient accumulator, in shared memory, so the
default 64 × 512 blocks overflow it, and the blocks that fit run 5–7× slower than unfused
logits. No TPU has run them. So "auto" means the XLA path on every backend, until the kernels
tile the hidden width too.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxdistill import losses
from jaxdistill.errors import DistillError

IMPLEMENTATIONS = ("auto", "xla", "pallas")
# The XLA path sizes its token chunks so one [chunk, V] float32 array stays near this budget.
_CHUNK_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static settings of one fused divergence (hashable, so jit and custom_vjp key on it)."""

    divergence: losses.Divergence
    implementation: str = "xla"
    block_tokens: int = 0  # 0: chosen from the vocabulary size
    block_vocab: int = 512  # Pallas only: vocabulary columns streamed per step
    interpret: bool = False


def entry_terms(div: losses.Divergence, log_p: Array, log_q: Array) -> tuple[Array, Array]:
    """(v, w) per vocabulary entry: ℓ = Σ v, and w = q·∂ℓ/∂q up to a multiple of q.

    One explicit case per kind, an error for any other. Terms are selected before multiplying,
    so an entry with zero mass contributes exactly 0 to the value and to the gradient (no 0·∞).
    """
    p, q = jnp.exp(log_p), jnp.exp(log_q)

    def times(mass, log_ratio):
        return jnp.where(mass > 0, mass * log_ratio, 0.0)

    match div.kind:
        case "fkl":
            return times(p, log_p - log_q), -p
        case "rkl":
            value = times(q, log_q - log_p)
            return value, value
        case "jsd":
            log_m = losses.log_mix(div.beta, log_p, log_q)
            student_part = times(q, log_q - log_m)
            return (div.beta * times(p, log_p - log_m) + (1 - div.beta) * student_part,
                    (1 - div.beta) * student_part)
        case "tvd":
            return 0.5 * jnp.abs(p - q), 0.5 * q * jnp.sign(q - p)
        case "skl":
            log_m = losses.log_mix(div.skew, log_p, log_q)
            return times(p, log_p - log_m), -(1 - div.skew) * q * jnp.exp(log_p - log_m)
        case "srkl":
            log_m = losses.log_mix(div.skew, log_q, log_p)
            value = times(q, log_q - log_m)
            return value, value - div.skew * q * jnp.exp(log_q - log_m)
        case _:
            raise DistillError(f"divergence {div.kind!r} has no fused implementation;"
                               " add a case to kernels.fused_divergence.entry_terms")


def logits(hidden: Array, head: Array, temperature: float) -> Float[Array, "n v"]:
    """hidden @ head / T, accumulated in float32 whatever the input dtype."""
    return jnp.dot(hidden, head, preferred_element_type=jnp.float32) / temperature


def _xla_chunk(spec: Spec, with_grads: bool, student_hidden, student_head, teacher_hidden,
               teacher_head, weights):
    """One chunk of tokens, whole vocabulary: Σ weighted value, and dℓ/dh_s, dℓ/dW_s if asked."""
    temperature = spec.divergence.temperature
    log_q = jax.nn.log_softmax(logits(student_hidden, student_head, temperature), axis=-1)
    log_p = jax.nn.log_softmax(logits(teacher_hidden, teacher_head, temperature), axis=-1)
    values, scores = entry_terms(spec.divergence, log_p, log_q)
    value = jnp.sum(jnp.sum(values, -1) * weights)
    if not with_grads:
        return value, None, None
    grad_logits = (scores - jnp.exp(log_q) * jnp.sum(scores, -1, keepdims=True))
    grad_logits *= (weights / temperature)[:, None]
    grad_logits = grad_logits.astype(student_head.dtype)
    grad_hidden = jnp.dot(grad_logits, student_head.T, preferred_element_type=jnp.float32)
    grad_head = jnp.dot(student_hidden.T, grad_logits, preferred_element_type=jnp.float32)
    return value, grad_hidden, grad_head


def _xla_forward(spec: Spec, student_hidden, student_head, teacher_hidden, teacher_head, weights,
                 with_grads: bool = True):
    """Scans over chunks of tokens, accumulating the value and the student's head gradient.

    Chunk c holds tokens {i·n + c}, a strided slice: when the tokens are sharded over devices
    every chunk spans all of them, so each device works on its own rows at every step.
    """
    num_tokens, vocab = student_hidden.shape[0], student_head.shape[1]
    chunk = spec.block_tokens or max(8, min(1024, 2 ** int(math.log2(_CHUNK_BYTES // (4 * vocab)))))
    chunk = min(chunk, -(-num_tokens // 8) * 8)
    num_chunks = -(-num_tokens // chunk)
    padded = num_chunks * chunk

    def chunked(x):
        x = jnp.pad(x, [(0, padded - num_tokens)] + [(0, 0)] * (x.ndim - 1))
        return jnp.moveaxis(x.reshape(chunk, num_chunks, *x.shape[1:]), 1, 0)

    def body(carry, xs):
        value, grad_head = carry
        chunk_value, grad_hidden, chunk_grad_head = _xla_chunk(
            spec, with_grads, xs[0], student_head, xs[1], teacher_head, xs[2])
        if with_grads:
            grad_head = grad_head + chunk_grad_head
        return (value + chunk_value, grad_head), grad_hidden

    init = (jnp.zeros((), jnp.float32),
            jnp.zeros(student_head.shape, jnp.float32) if with_grads else None)
    (value, grad_head), grad_hidden = jax.lax.scan(
        body, init, (chunked(student_hidden), chunked(teacher_hidden), chunked(weights)))
    if not with_grads:
        return value, None, None
    grad_hidden = jnp.moveaxis(grad_hidden, 0, 1).reshape(padded, -1)[:num_tokens]
    return value, grad_hidden, grad_head


def _forward(spec: Spec, *args, with_grads: bool):
    if spec.implementation == "pallas":
        # Imported on first use: that module imports this one (for `logits` and `entry_terms`),
        # and the XLA path, the default, never needs jax.experimental.pallas loaded.
        from jaxdistill.kernels import fused_divergence_pallas

        return fused_divergence_pallas.forward(spec, *args, with_grads=with_grads)
    return _xla_forward(spec, *args, with_grads=with_grads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(spec: Spec, student_hidden, student_head, teacher_hidden, teacher_head, weights):
    return _forward(spec, student_hidden, student_head, teacher_hidden, teacher_head, weights,
                    with_grads=False)[0]


def _fused_fwd(spec, student_hidden, student_head, teacher_hidden, teacher_head, weights):
    value, grad_hidden, grad_head = _forward(
        spec, student_hidden, student_head, teacher_hidden, teacher_head, weights, with_grads=True)
    zeros = (jnp.zeros_like(teacher_hidden), jnp.zeros_like(teacher_head), jnp.zeros_like(weights))
    return value, (grad_hidden.astype(student_hidden.dtype), grad_head.astype(student_head.dtype),
                   zeros)


def _fused_bwd(spec, residuals, cotangent):
    del spec
    grad_hidden, grad_head, zeros = residuals
    return (cotangent * grad_hidden, cotangent * grad_head, *zeros)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_shapes(student_hidden, student_head, teacher_hidden, teacher_head, mask) -> None:
    if student_hidden.ndim != 2 or teacher_hidden.ndim != 2:
        raise DistillError(
            f"hidden states must be [tokens, width], got student {student_hidden.shape} and teacher"
            f" {teacher_hidden.shape}; flatten batch and sequence axes first")
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise DistillError(f"student and teacher see different token counts:"
                           f" {student_hidden.shape[0]} vs {teacher_hidden.shape[0]}; pass both"
                           " models' hidden states of the same tokens, flattened alike")
    for owner, hidden, head in (("student", student_hidden, student_head),
                                ("teacher", teacher_hidden, teacher_head)):
        if head.ndim != 2 or head.shape[0] != hidden.shape[1]:
            raise DistillError(
                f"the {owner} head {head.shape} must be [width={hidden.shape[1]}, vocab];"
                " pass the output projection (the tied embedding transposed)")
    if student_head.shape[1] != teacher_head.shape[1]:
        raise DistillError(
            f"student vocabulary {student_head.shape[1]} != teacher vocabulary"
            f" {teacher_head.shape[1]}; pad or slice one head so both have the same size")
    if mask is not None and mask.shape != student_hidden.shape[:1]:
        raise DistillError(f"mask shape {mask.shape} must be [tokens] = {student_hidden.shape[:1]}")


def fused_linear_divergence(
    student_hidden: Float[Array, "tokens width"],
    student_head: Float[Array, "width vocab"],
    teacher_hidden: Float[Array, "tokens teacher_width"],
    teacher_head: Float[Array, "teacher_width vocab"],
    kind: str | losses.Divergence,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    mask: Array | None = None,
    implementation: str = "auto",
    block_tokens: int = 0,
    block_vocab: int = 512,
    interpret: bool = False,
) -> Float[Array, ""]:
    """`losses.divergence(h_s @ W_s, h_t @ W_t, kind, ...)`: the mean over unmasked tokens.

    `kind` is a kind name with its keyword settings, or a `losses.Divergence` carrying its own
    (the keywords then keep their defaults). `implementation`: "xla" (also what "auto" picks, see
    the module docstring) or "pallas"; `interpret=True` runs the Pallas kernels on CPU.
    Gradients flow to the student's hidden states and head; the teacher's arguments get zero
    gradients (the teacher is never trained).
    """
    div = losses.as_divergence(kind, temperature, beta, alpha)
    _check_shapes(student_hidden, student_head, teacher_hidden, teacher_head, mask)
    if implementation not in IMPLEMENTATIONS:
        raise DistillError(f"unknown implementation {implementation!r}; choose one of"
                           f" {', '.join(IMPLEMENTATIONS)}")
    if implementation == "auto":
        implementation = "xla"
    spec = Spec(div, implementation, block_tokens, block_vocab, interpret)
    num_tokens = student_hidden.shape[0]
    mask = jnp.ones((num_tokens,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    weights = mask / jnp.maximum(jnp.sum(mask), 1.0)
    # Padded rows may hold anything (even NaN); zeroed, they cannot reach a value or a gradient.
    keep = mask[:, None] > 0
    student_hidden = jnp.where(keep, student_hidden, 0)
    teacher_hidden = jnp.where(keep, teacher_hidden, 0)
    return _fused(spec, student_hidden, student_head, teacher_hidden, teacher_head, weights)


def reference(student_hidden, student_head, teacher_hidden, teacher_head,
              kind: str | losses.Divergence, *, temperature=1.0, beta=0.5, alpha=0.1,
              mask=None) -> Float[Array, ""]:
    """The unfused computation the kernel must equal: materialized logits, then `divergence`."""
    dtype = jnp.promote_types(student_hidden.dtype, jnp.float32)
    return losses.divergence(
        jnp.dot(student_hidden, student_head, preferred_element_type=dtype),
        jnp.dot(teacher_hidden, teacher_head, preferred_element_type=dtype), kind,
        temperature=temperature, beta=beta, alpha=alpha, mask=mask)
