"""Plain supervised training (cross-entropy on labels): trains teachers and scratch baselines."""

from __future__ import annotations

from jaxdistill import losses
from jaxdistill.methods import register


@register("supervised", needs_teacher=False)
def make_loss(config, student, teacher):
    del teacher
    label_smoothing = config.loss.get("label_smoothing", 0.0)

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        logits = student.apply(params, batch["image"], train=True, rngs={"dropout": rng})
        loss = losses.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
        return loss, {"accuracy": losses.accuracy(logits, batch["label"])}

    return loss_fn
