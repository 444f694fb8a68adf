"""Builds the train step from a method's loss: the whole update, teacher forward included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdistill.methods import StatefulLoss, StateUpdate
from jaxdistill.state import DistillState


def make_train_step(loss: StatefulLoss, optimizer: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, ema_decay: float):
    """`train_step(state, teacher_params, batch) -> (state, metrics)`, pure and jittable.

    Only `state.params` is differentiated; the teacher's parameters pass through
    `stop_gradient`, so even a method that forgets to stop them cannot produce teacher gradients.
    """

    def train_step(state: DistillState, teacher_params, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        teacher_params = jax.lax.stop_gradient(teacher_params)
        (value, metrics), grads = jax.value_and_grad(loss.loss_fn, has_aux=True)(
            state.params, teacher_params, batch, rng, state.step, state.method_state)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_params is not None:
            ema_params = optax.incremental_update(params, ema_params, 1.0 - ema_decay)
        metrics = {
            **metrics,
            "loss": value,
            "lr": lr_schedule(state.step),
            "l2_grads": optax.global_norm(grads),
            "l2_updates": optax.global_norm(updates),
            "l2_params": optax.global_norm(params),
            # Checked before every save: a checkpoint never holds a non-finite param.
            "nonfinite_params": sum(jnp.sum(~jnp.isfinite(p)) for p in jax.tree.leaves(params)),
        }
        method_state = loss.update_state(state.method_state, state.step, value, metrics, params,
                                         batch)
        if isinstance(method_state, StateUpdate):
            metrics = {**metrics, **method_state.metrics}
            method_state = method_state.state
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params, method_state=method_state)
        return new_state, metrics

    return train_step
