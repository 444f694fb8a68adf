"""Progressive self-knowledge distillation, PS-KD (Kim et al., 2021).

The model at the previous epoch is the teacher: at epoch t of T the target is
    (1 − α_t)·onehot(y) + α_t·p_{t−1}(x),   α_t = α_T · t / T,
and the loss is the cross-entropy to it. α grows from 0 as the model's own predictions become
trustworthy (α_T = 0.8 in the paper). The engine keeps the previous epoch's params in the state
(`self_teacher`) and refreshes them as each epoch ends.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill import data, losses
from jaxdistill.errors import DistillError
from jaxdistill.methods import register


@register("pskd", self_teacher=True)
def make_loss(config, student, teacher):
    alpha_final = config.loss.alpha
    if not 0.0 <= alpha_final <= 1.0:
        raise DistillError(f"config.loss.alpha (PS-KD's α_T) must lie in [0, 1], got {alpha_final}")
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)
    total_epochs = config.total_steps / steps_per_epoch

    def loss_fn(params, previous_params, batch, rng, step):
        images, labels = batch["image"], batch["label"]
        logits = student.apply(params, images, train=True, rngs={"dropout": rng})
        previous = jax.nn.softmax(teacher.apply(previous_params, images, train=False))
        alpha = alpha_final * jnp.floor(step / steps_per_epoch) / total_epochs
        target = (1.0 - alpha) * jax.nn.one_hot(labels, logits.shape[-1]) + alpha * previous
        loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32)), -1))
        return loss, {"pskd/alpha": alpha, "accuracy": losses.accuracy(logits, labels),
                      "pskd/agreement_with_previous": losses.accuracy(logits, previous.argmax(-1))}

    return loss_fn
