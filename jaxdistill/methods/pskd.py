"""Progressive self-knowledge distillation, PS-KD (Kim et al., 2021).

The model at the previous epoch is the teacher: at epoch t of T the target is
    (1 − α_t)·onehot(y) + α_t·p_{t−1}(x),   α_t = α_T · t / T,
and the loss is the cross-entropy to it. α grows from 0 as the model's own predictions become
trustworthy (α_T = 0.8 in the paper). The previous epoch's params are this method's state: they
start as the initial params and become the new params whenever a step completes an epoch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, StatefulLoss, register


@register("pskd", teacher="self", tasks=("classification",), settings={"loss": {"alpha": 0.5}})
def make_loss(ctx: Context):
    student, alpha_final, steps_per_epoch = ctx.student, ctx.config.loss.alpha, ctx.steps_per_epoch
    if not 0.0 <= alpha_final <= 1.0:
        raise DistillError(f"config.loss.alpha (PS-KD's α_T) must lie in [0, 1], got {alpha_final}")
    total_epochs = ctx.config.total_steps / steps_per_epoch

    def epoch(step):
        return jnp.floor(step / steps_per_epoch)

    def loss_fn(params, teacher_params, batch, rng, step, previous_params):
        del teacher_params
        images, labels = batch["image"], batch["label"]
        logits = student.apply(params, images, train=True, rngs={"dropout": rng})
        previous = jax.nn.softmax(student.apply(jax.lax.stop_gradient(previous_params), images,
                                                train=False))
        alpha = alpha_final * epoch(step) / total_epochs
        target = (1.0 - alpha) * jax.nn.one_hot(labels, logits.shape[-1]) + alpha * previous
        loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32)), -1))
        return loss, {"pskd/alpha": alpha, "accuracy": losses.accuracy(logits, labels),
                      "pskd/agreement_with_previous": losses.accuracy(logits, previous.argmax(-1))}

    def update_state(previous_params, step, loss, metrics, params, batch):
        del loss, metrics, batch
        refresh = epoch(step + 1) > epoch(step)
        return jax.tree.map(lambda new, old: jnp.where(refresh, new, old), params,
                            previous_params)

    return StatefulLoss(loss_fn, lambda params: jax.tree.map(jnp.copy, params), update_state)
