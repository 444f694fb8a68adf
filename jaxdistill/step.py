"""Builds the train step from a method's loss: the whole update, teacher forward included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdistill.methods import StatefulLoss
from jaxdistill.state import DistillState


def _epoch(step, steps_per_epoch: float):
    return jnp.floor(step / steps_per_epoch)


def teaching_params(state: DistillState, teacher_params):
    """The params that teach this step: the student's own snapshot when it keeps one."""
    return state.snapshot_params if state.snapshot_params is not None else teacher_params


def make_train_step(loss: StatefulLoss, optimizer: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, ema_decay: float,
                    steps_per_epoch: float | None = None):
    """`train_step(state, teacher_params, batch) -> (state, metrics)`, pure and jittable.

    Only `state.params` is differentiated; the teacher's parameters pass through
    `stop_gradient`, so even a method that forgets to stop them cannot produce teacher gradients.
    When the state keeps a snapshot (self-distillation), the snapshot is the teacher and is
    refreshed with the new params whenever a step completes an epoch of `steps_per_epoch`.
    """

    def train_step(state: DistillState, teacher_params, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        teacher_params = jax.lax.stop_gradient(teaching_params(state, teacher_params))
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
        }
        snapshot = state.snapshot_params
        if snapshot is not None:
            refresh = _epoch(state.step + 1, steps_per_epoch) > _epoch(state.step, steps_per_epoch)
            snapshot = jax.tree.map(lambda new, old: jnp.where(refresh, new, old), params, snapshot)
        method_state = loss.update_state(state.method_state, state.step, value, metrics, params,
                                         batch)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params, snapshot_params=snapshot,
                                  method_state=method_state)
        return new_state, metrics

    return train_step
