"""AdaSPEC-style selective token distillation (Hu et al. 2025) for speculative-decoding drafts.

A small draft cannot match its target everywhere, and spending capacity on tokens it will never
fit costs acceptance elsewhere. Each step scores every counted token by the student's loss gap
to a reference, gap = NLL_student(y) − NLL_reference(y) on the real next token y, and distills
(config.loss.divergence, usually fkl) only on the `config.loss.keep_fraction` of tokens with
the largest gap: the ones the student has not learned yet but a stronger model shows are
learnable.

This is a simplified AdaSPEC: the paper's reference is a separate draft-sized model distilled
from the target, and its score ΔL = KL(P‖q_draft) − KL(P‖q_ref) drops the tokens a small model
cannot fit. Here the reference is the teacher itself, so the score is the student's NLL gap to
its target per token, and the selection favours the tokens the student is furthest from — it
does not filter out the ones too hard for a small model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, lm, merge_settings, register


def largest(scores: jax.Array, mask: jax.Array, fraction: float) -> jax.Array:
    """A mask of the ceil(fraction · count) counted entries with the largest scores."""
    flat_scores = jnp.where(mask > 0, scores, -jnp.inf).reshape(-1)
    keep = jnp.ceil(fraction * jnp.sum(mask)).astype(jnp.int32)
    rank = jnp.argsort(jnp.argsort(-flat_scores))  # 0 for the largest score
    return ((rank < keep) & (flat_scores > -jnp.inf)).reshape(scores.shape).astype(jnp.float32)


@register("adaspec", tasks=("lm",),
          settings=merge_settings(lm.SETTINGS, {"loss": {"keep_fraction": 0.4}}))
def make_loss(ctx: Context):
    divergence = lm.TokenDivergence(ctx.config.loss, ctx.student, ctx.teacher)
    fraction = ctx.config.loss.keep_fraction
    if not 0.0 < fraction <= 1.0:
        raise DistillError(f"config.loss.keep_fraction must lie in (0, 1], got {fraction}")
    if divergence.fused:
        raise DistillError("adaspec scores tokens with both models' logits, which"
                           " config.loss.fused never builds; set config.loss.fused=False")

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        sequence = lm.real_text(batch)
        hidden = divergence.hidden_and_heads(params, teacher_params, sequence, rng)
        student_logits = lm.logits_from(divergence.student, hidden[0], hidden[1])
        teacher_logits = lm.logits_from(divergence.teacher, hidden[2], hidden[3])
        gap = jax.lax.stop_gradient(losses.token_nll(student_logits, sequence.targets)
                                    - losses.token_nll(teacher_logits, sequence.targets))
        selected = largest(gap, sequence.loss_mask, fraction)
        value = divergence.from_logits(student_logits, teacher_logits, selected)
        kept_gap = jnp.sum(gap * selected) / jnp.maximum(jnp.sum(selected), 1.0)
        return value, {"distill/selected_gap": kept_gap, **lm.counted(selected)}

    return loss_fn
