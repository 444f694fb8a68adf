"""Supervised fine-tuning of a language model: next-token cross-entropy on the real text.

Trains the teacher LM (packed documents) and the `sft` baseline of the GKD table (the real
continuation of each prompt)."""

from __future__ import annotations

from jaxdistill import losses
from jaxdistill.methods import Context, lm, register


@register("sft", teacher="none", tasks=("lm",), settings=lm.SETTINGS)
def make_loss(ctx: Context):
    student = ctx.student

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        sequence = lm.real_text(batch)
        logits = lm.logits(student, params, sequence, train=True, rng=rng)
        nll = lm.sequence_nll(logits, sequence)
        return nll, {"accuracy": losses.accuracy(logits, sequence.targets, sequence.loss_mask),
                     **lm.counted(sequence.loss_mask)}

    return loss_fn
