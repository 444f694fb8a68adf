"""Plain supervised training (cross-entropy on labels): trains teachers and scratch baselines."""

from __future__ import annotations

from jaxdistill import losses
from jaxdistill.methods import Context, register


@register("supervised", teacher="none", tasks=("classification",),
          settings={"loss": {"label_smoothing": 0.0}})
def make_loss(ctx: Context):
    student, label_smoothing = ctx.student, ctx.config.loss.label_smoothing

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        logits = student.apply(params, batch["image"], train=True, rngs={"dropout": rng})
        loss = losses.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
        return loss, {"accuracy": losses.accuracy(logits, batch["label"])}

    return loss_fn
