"""Masked distances between distributions, shared by training and evaluation.

Computed in float32 whatever the input dtype (float64 inputs stay float64, for references).

P is the teacher's distribution and Q the student's, both `softmax(logits / temperature)`.
The τ² gradient factor of Hinton KD belongs to the method, not here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxdistill.errors import DistillError

# Every divergence kind. `Divergence` accepts only these, and each dispatch (`_pointwise` here,
# `entry_terms` in the fused kernel) has one case per kind and raises on any other.
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl")


@dataclasses.dataclass(frozen=True)
class Divergence:
    """One divergence with its settings, checked on construction.

    kinds: fkl KL(P‖Q); rkl KL(Q‖P); jsd β·KL(P‖M)+(1−β)·KL(Q‖M) with M=βP+(1−β)Q;
    tvd ½Σ|P−Q|; skl KL(P‖αP+(1−α)Q); srkl KL(Q‖αQ+(1−α)P), α = `skew` (the public functions'
    `alpha`). Settings a kind does not use are ignored. Frozen and hashable, so jit and
    custom_vjp can take it as a static argument.
    """

    kind: str
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1

    def __post_init__(self) -> None:
        # Plain floats: equal settings hash alike whatever scalar type they came as.
        for name in ("temperature", "beta", "skew"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.kind not in DIVERGENCES:
            raise DistillError(
                f"unknown divergence {self.kind!r}; choose one of {', '.join(DIVERGENCES)}")
        if not self.temperature > 0:
            raise DistillError(f"temperature must be > 0, got {self.temperature}")
        if self.kind == "jsd" and not 0.0 < self.beta < 1.0:
            raise DistillError(
                f"jsd needs beta strictly inside (0, 1), got {self.beta}: at the ends it is"
                " identically zero; use kind='fkl' or kind='rkl' instead")
        if self.kind in ("skl", "srkl") and not 0.0 <= self.skew < 1.0:
            raise DistillError(f"{self.kind} needs skew alpha in [0, 1), got {self.skew}")


def as_divergence(kind: str | Divergence, temperature: float = 1.0, beta: float = 0.5,
                  alpha: float = 0.1) -> Divergence:
    """The `Divergence` that a public function's (kind, temperature, beta, alpha) describe.

    `kind` may itself be a `Divergence`; it carries its own settings, so the keywords must then
    keep their defaults (rather than being silently ignored).
    """
    if not isinstance(kind, Divergence):
        return Divergence(kind, temperature, beta, alpha)
    if (temperature, beta, alpha) != (1.0, 0.5, 0.1):
        raise DistillError(
            f"{kind} already carries temperature, beta and skew; pass the settings inside the"
            " Divergence, not as keywords beside it")
    return kind


def _kl(log_a: Array, log_b: Array) -> Array:
    """Σ a (log a − log b) over the last axis; entries with a = 0 contribute exactly 0."""
    a = jnp.exp(log_a)
    # Where a == 0, log_a may be -inf; select before multiplying so neither value nor gradient
    # ever sees 0 · inf.
    safe_diff = jnp.where(a > 0, log_a - log_b, 0.0)
    return jnp.sum(a * safe_diff, axis=-1)


def log_mix(weight: float, log_a: Array, log_b: Array) -> Array:
    """log(w·a + (1 − w)·b), computed in log space."""
    return jnp.logaddexp(jnp.log(weight) + log_a, jnp.log1p(-weight) + log_b)


def _check_mask(mask: Array | None, logits: Array) -> None:
    if mask is not None and mask.shape != logits.shape[:-1]:
        raise DistillError(
            f"mask shape {mask.shape} must equal the logits' leading shape {logits.shape[:-1]}")


def _at_least_float32(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _log_softmax(logits: Array, temperature: float) -> Array:
    """log softmax(logits / T) in float32 (float64 for float64 inputs)."""
    return jax.nn.log_softmax(_at_least_float32(logits) / temperature, axis=-1)


def _pointwise(div: Divergence, student_logits: Array, teacher_logits: Array) -> Array:
    """The divergence at every position: one explicit case per kind, an error for any other."""
    log_q = _log_softmax(student_logits, div.temperature)
    log_p = _log_softmax(teacher_logits, div.temperature)
    match div.kind:
        case "fkl":
            return _kl(log_p, log_q)
        case "rkl":
            return _kl(log_q, log_p)
        case "jsd":
            log_m = log_mix(div.beta, log_p, log_q)
            return div.beta * _kl(log_p, log_m) + (1.0 - div.beta) * _kl(log_q, log_m)
        case "tvd":
            return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)
        case "skl":
            return _kl(log_p, log_mix(div.skew, log_p, log_q))
        case "srkl":
            return _kl(log_q, log_mix(div.skew, log_q, log_p))
        case _:
            raise DistillError(f"divergence {div.kind!r} has no implementation in losses;"
                               " add a case to losses._pointwise")


def pointwise_divergence(
    student_logits: Float[Array, "*batch vocab"],
    teacher_logits: Float[Array, "*batch vocab"],
    kind: str | Divergence,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> Float[Array, "*batch"]:
    """The divergence at every position, unreduced, in float32 (or float64 for float64 inputs).

    `kind` is a kind name with its keyword settings, or a `Divergence` (see `as_divergence`).
    """
    return _pointwise(as_divergence(kind, temperature, beta, alpha), student_logits,
                      teacher_logits)


def masked_mean(values: Float[Array, "*batch"], mask: Array | None) -> Float[Array, ""]:
    """Mean over the positions where mask is true (all positions when mask is None).

    Under jit on global arrays the sums run over every device's shard, so the normaliser is the
    global count of unmasked positions, not a per-device one.
    """
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _clean_masked_rows(logits: Array, mask: Array | None) -> Array:
    """Replace padded rows by zeros so -inf or garbage there never reaches a value or gradient."""
    if mask is None:
        return logits
    return jnp.where(mask[..., None].astype(bool), logits, 0.0)


def divergence(
    student_logits: Float[Array, "*batch vocab"],
    teacher_logits: Float[Array, "*batch vocab"],
    kind: str | Divergence,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    mask: Array | None = None,
) -> Float[Array, ""]:
    """Scalar mean divergence over unmasked positions (the kinds: see `Divergence`).

    `kind` is a kind name with its keyword settings (alpha is the skew of skl/srkl), or a
    `Divergence`, which carries its own settings (the keywords then keep their defaults).
    """
    div = as_divergence(kind, temperature, beta, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise DistillError(
            f"student logits {student_logits.shape} and teacher logits {teacher_logits.shape}"
            " differ in shape; pad or slice one vocabulary so both heads have the same size")
    _check_mask(mask, student_logits)
    per_position = _pointwise(div, _clean_masked_rows(student_logits, mask),
                              _clean_masked_rows(teacher_logits, mask))
    return masked_mean(per_position, mask)


# Sparse teacher targets: the teacher's top-k tokens cached offline instead of its full logits.

TAILS = ("bucket", "renormalize")


def top_k_targets(
    teacher_logits: Float[Array, "*batch vocab"], k: int, *, temperature: float = 1.0,
) -> tuple[Float[Array, "*batch k"], Int[Array, "*batch k"]]:
    """The teacher's k most likely tokens at `temperature`: (log-probabilities, indices).

    The log-probabilities are normalised over the whole vocabulary, so the mass outside the
    top k (the tail) is known exactly from them: 1 − Σ exp(top).
    """
    top_log_p, indices = jax.lax.top_k(_log_softmax(teacher_logits, temperature), k)
    return top_log_p, indices.astype(jnp.int32)


def _floored(log_mass: Array) -> Array:
    """At least the smallest normal float: an empty tail (k = vocabulary) stays finite."""
    return jnp.maximum(log_mass, jnp.log(jnp.finfo(log_mass.dtype).tiny))


def _log_tail(top_log_probs: Array) -> Array:
    """log(1 − Σ exp(top))."""
    return _floored(jnp.log(-jnp.expm1(jnp.minimum(jax.nn.logsumexp(top_log_probs, -1), 0.0))))


def _student_top_and_tail(log_q: Array, indices: Array) -> tuple[Array, Array]:
    """The student's log-probabilities at the teacher's top-k tokens, and of everything else."""
    top = jnp.take_along_axis(log_q, indices, axis=-1)
    in_top = jnp.zeros(log_q.shape, bool)
    in_top = jnp.put_along_axis(in_top, indices, True, axis=-1, inplace=False)
    return top, _floored(jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, log_q), axis=-1))


def sparse_divergence(
    student_logits: Float[Array, "*batch vocab"],
    top_log_probs: Float[Array, "*batch k"],
    top_indices: Int[Array, "*batch k"],
    kind: str | Divergence,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    mask: Array | None = None,
    tail: str = "bucket",
) -> Float[Array, ""]:
    """`divergence` against a teacher known only by its top-k (see `top_k_targets`).

    tail="bucket" (default): both distributions are coarsened to k+1 outcomes, the teacher's top
    k tokens and one bucket holding all the remaining mass, and the divergence is taken exactly
    between them; by the data-processing inequality it never exceeds the full divergence, and it
    equals it when k is the whole vocabulary. tail="renormalize": both distributions are
    restricted to the top k and renormalised (what most offline-logit tools do); this drops the
    student's mass outside the top k from the loss altogether.
    `top_log_probs` must come from the same `temperature` (the teacher's full softmax is gone).
    `kind` may be a `Divergence`, as in `divergence`.
    """
    div = as_divergence(kind, temperature, beta, alpha)
    if tail not in TAILS:
        raise DistillError(f"unknown tail {tail!r}; choose one of {', '.join(TAILS)}")
    if (top_log_probs.shape != top_indices.shape
            or top_indices.shape[:-1] != student_logits.shape[:-1]):
        raise DistillError(
            f"top-k targets {top_log_probs.shape} / {top_indices.shape} do not match the student"
            f" logits {student_logits.shape}: cache them from the same batch layout")
    _check_mask(mask, student_logits)
    student_logits = _clean_masked_rows(student_logits, mask)
    top_log_probs = _clean_masked_rows(_at_least_float32(top_log_probs), mask)
    log_q = _log_softmax(student_logits, div.temperature)
    student_top, student_tail = _student_top_and_tail(log_q, top_indices)
    if tail == "bucket":
        teacher = jnp.concatenate([top_log_probs, _log_tail(top_log_probs)[..., None]], -1)
        student = jnp.concatenate([student_top, student_tail[..., None]], -1)
    else:
        teacher, student = top_log_probs, student_top
    # Already log-probabilities (or renormalised by the log-softmax inside): temperature 1.
    per_position = _pointwise(dataclasses.replace(div, temperature=1.0), student, teacher)
    return masked_mean(per_position, mask)


def _label_nll(log_probs: Array, labels: Array) -> Array:
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def token_nll(logits: Float[Array, "*batch classes"],
              labels: Int[Array, "*batch"]) -> Float[Array, "*batch"]:
    """−log softmax(logits)[label] at every position, unreduced, in float32."""
    return _label_nll(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), labels)


def cross_entropy(
    logits: Float[Array, "*batch classes"],
    labels: Int[Array, "*batch"],
    mask: Array | None = None,
    *,
    label_smoothing: float = 0.0,
) -> Float[Array, ""]:
    """Mean softmax cross-entropy against integer labels, in float32."""
    log_probs = jax.nn.log_softmax(_clean_masked_rows(logits, mask).astype(jnp.float32), axis=-1)
    nll = _label_nll(log_probs, labels)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    return masked_mean(nll, mask)


def accuracy(logits: Array, labels: Array, mask: Array | None = None) -> Float[Array, ""]:
    return masked_mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), mask)


# Feature distillation: hidden states, embeddings and self-attention relations.


def mse(student: Float[Array, "*batch dim"], teacher: Float[Array, "*batch dim"],
        mask: Array | None = None) -> Float[Array, ""]:
    """Mean squared error per position (averaged over features), masked mean over positions."""
    diff = student.astype(jnp.float32) - teacher.astype(jnp.float32)
    return masked_mean(jnp.mean(jnp.square(diff), axis=-1), mask)


def cosine_distance(student: Float[Array, "*batch dim"], teacher: Float[Array, "*batch dim"],
                    mask: Array | None = None) -> Float[Array, ""]:
    """1 − cos(student, teacher) per position, masked mean over positions."""
    student, teacher = student.astype(jnp.float32), teacher.astype(jnp.float32)
    norms = jnp.linalg.norm(student, axis=-1) * jnp.linalg.norm(teacher, axis=-1)
    cosine = jnp.sum(student * teacher, axis=-1) / jnp.maximum(norms, 1e-8)
    return masked_mean(1.0 - cosine, mask)


def relation_log_probs(
    left: Float[Array, "batch seq heads head_dim"],
    right: Float[Array, "batch seq heads head_dim"],
    attention_mask: Int[Array, "batch seq"],
    num_relation_heads: int,
) -> Float[Array, "batch relation_heads seq seq"]:
    """log softmax(A·Bᵀ/√d_r) over unpadded keys, with the heads regrouped into R relation heads.

    MiniLMv2's relation heads: all heads' vectors are concatenated and split into R equal heads
    (d_r = width / R), so a teacher and a student with different head counts compare R×S×S maps.
    When R equals the model's head count, left=queries and right=keys, this is exactly the
    self-attention distribution (MiniLM's attention transfer).
    """
    batch, seq = left.shape[:2]
    width = left.shape[2] * left.shape[3]
    if width % num_relation_heads:
        raise DistillError(f"{num_relation_heads} relation heads do not divide the width {width};"
                           " set config.loss.relation_heads to a divisor of both models' widths")
    head_dim = width // num_relation_heads

    def regroup(x):
        return x.astype(jnp.float32).reshape(batch, seq, num_relation_heads, head_dim)

    scores = jnp.einsum("bqrd,bkrd->brqk", regroup(left), regroup(right)) / jnp.sqrt(head_dim)
    keys = attention_mask[:, None, None, :] > 0
    return jax.nn.log_softmax(jnp.where(keys, scores, jnp.finfo(jnp.float32).min), axis=-1)


def relation_kl(
    student: tuple[Array, Array],
    teacher: tuple[Array, Array],
    attention_mask: Int[Array, "batch seq"],
    num_relation_heads: int,
) -> Float[Array, ""]:
    """KL(teacher relation ‖ student relation), mean over relation heads and unpadded queries.

    `student` and `teacher` are (left, right) vector pairs: (queries, keys), (values, values), ...
    """
    log_p = relation_log_probs(*teacher, attention_mask, num_relation_heads)
    log_q = relation_log_probs(*student, attention_mask, num_relation_heads)
    per_query = jnp.mean(_kl(log_p, log_q), axis=1)  # [batch, seq]
    return masked_mean(per_query, attention_mask)
