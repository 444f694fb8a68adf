"""Hinton et al. (2015) knowledge distillation.

loss = α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1 − α)·CE(s, labels)

The τ² factor keeps the soft term's gradient scale independent of τ, as the paper prescribes.
"""

from __future__ import annotations

import jax

from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, register

# Hinton KD's soft-target temperature τ and soft-loss weight α.
SETTINGS = {"loss": {"temperature": 1.0, "alpha": 0.5}}


@register("kd", tasks=("classification",), settings=SETTINGS)
def make_loss(ctx: Context):
    student, teacher = ctx.student, ctx.teacher
    temperature, alpha = ctx.config.loss.temperature, ctx.config.loss.alpha
    if not temperature > 0:
        raise DistillError(f"config.loss.temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"config.loss.alpha must lie in [0, 1], got {alpha}")

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        images, labels = batch["image"], batch["label"]
        student_logits = student.apply(params, images, train=True, rngs={"dropout": rng})
        teacher_logits = jax.lax.stop_gradient(teacher.apply(teacher_params, images, train=False))
        soft = temperature**2 * losses.divergence(
            student_logits, teacher_logits, "fkl", temperature=temperature)
        hard = losses.cross_entropy(student_logits, labels)
        metrics = {
            "distill/soft_loss": soft,
            "distill/hard_loss": hard,
            "accuracy": losses.accuracy(student_logits, labels),
            "teacher_agreement": losses.accuracy(student_logits, teacher_logits.argmax(-1)),
        }
        return alpha * soft + (1.0 - alpha) * hard, metrics

    return loss_fn
