"""Token-level logit distillation on real text ("supervised KD"), with any divergence.

loss = τ²·D(teacher ‖ student) per next-token distribution, averaged over the counted tokens,
plus `config.loss.ce_weight` × the student's cross-entropy on the real next token. With fkl this is
word-level KD (Kim & Rush 2016); skl/srkl are DistiLLM's skew KLs; the divergence, temperature
and the fused kernel come from config.loss (see `lm.TokenDivergence`).
"""

from __future__ import annotations

from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, lm, register


@register("logit_kd", tasks=("lm",), settings=lm.SETTINGS)
def make_loss(ctx: Context):
    divergence = lm.TokenDivergence(ctx.config.loss, ctx.student, ctx.teacher)
    ce_weight = ctx.config.loss.ce_weight
    if ce_weight and divergence.fused:
        raise DistillError("config.loss.ce_weight needs the student's logits, which"
                           " config.loss.fused never builds; use one or the other")

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        sequence = lm.real_text(batch)
        hidden = divergence.hidden_and_heads(params, teacher_params, sequence, rng)
        if not ce_weight:
            distill = divergence.from_hidden(*hidden, sequence.loss_mask)
            return distill, {"distill/divergence": distill, **lm.counted(sequence.loss_mask)}
        logits = lm.logits_from(divergence.student, hidden[0], hidden[1])
        distill = divergence.from_logits(
            logits, lm.logits_from(divergence.teacher, hidden[2], hidden[3]), sequence.loss_mask)
        nll = lm.sequence_nll(logits, sequence)
        return distill + ce_weight * nll, {"distill/divergence": distill, "distill/nll": nll,
                                           **lm.counted(sequence.loss_mask)}

    return loss_fn
