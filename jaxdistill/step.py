"""Builds the train step from a method's loss: the whole update, teacher forward included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdistill.methods import LOSS_WEIGHT, StatefulLoss, StateUpdate
from jaxdistill.state import DistillState


def make_train_step(loss: StatefulLoss, optimizer: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, ema_decay: float, micro_batches: int = 1):
    """`train_step(state, teacher_params, batch) -> (state, metrics)`, pure and jittable.

    Only `state.params` is differentiated; the teacher's parameters pass through
    `stop_gradient`, so even a method that forgets to stop them cannot produce teacher gradients.
    With `micro_batches` > 1 the gradient is accumulated over that many slices of the batch
    (see `accumulated_gradients`) before the one optimizer update.
    """
    gradients = accumulated_gradients(loss.loss_fn, micro_batches)

    def train_step(state: DistillState, teacher_params, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        teacher_params = jax.lax.stop_gradient(teacher_params)
        (value, metrics), grads = gradients(state.params, teacher_params, batch, rng, state.step,
                                            state.method_state)
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


def accumulated_gradients(loss_fn, micro_batches: int):
    """`loss_fn`'s `((value, metrics), grads)` on a batch, computed `micro_batches` slices at a
    time (a `lax.scan`: one slice's activations live at once).

    A loss that is a mean over counted items (an LM's tokens) reports their number as
    `metrics[LOSS_WEIGHT]`; each slice's value, metrics and gradient are weighted by it and the
    sums divided by the total, so the result is the loss of the whole batch normalised by its
    global count, as one large step computes it. A loss that reports no weight is a mean over
    equal slices. Slice m takes rows m, m + M, m + 2M, ... so that every slice spans every
    batch shard; its dropout key is the step's key folded with m.
    """
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return value_and_grad

    def gradients(params, teacher_params, batch, rng, step, method_state):
        def one_slice(index, micro_batch):
            (value, metrics), grads = value_and_grad(params, teacher_params, micro_batch,
                                                     jax.random.fold_in(rng, index), step,
                                                     method_state)
            weight = jnp.asarray(metrics.get(LOSS_WEIGHT, 1.0), jnp.float32)
            return weight, jax.tree.map(lambda x: weight * x, (value, metrics, grads))

        def add(total, sliced):
            index, micro_batch = sliced
            return jax.tree.map(jnp.add, total, one_slice(index, micro_batch)), None

        slices = jax.tree.map(lambda x: _slices(x, micro_batches), batch)
        first = jax.tree.map(lambda x: x[0], slices)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(one_slice, 0, first))
        (weight, (value, metrics, grads)), _ = jax.lax.scan(
            add, zeros, (jnp.arange(micro_batches), slices))
        value, metrics, grads = jax.tree.map(lambda x: x / weight, (value, metrics, grads))
        if LOSS_WEIGHT in metrics:
            metrics = {**metrics, LOSS_WEIGHT: weight}
        return (value, metrics), grads

    return gradients


def _slices(x: jax.Array, micro_batches: int) -> jax.Array:
    """[B, ...] -> [M, B / M, ...], slice m holding rows m, m + M, ..."""
    rows = x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:])
    return jnp.swapaxes(rows, 0, 1)
