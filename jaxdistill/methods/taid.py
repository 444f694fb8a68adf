"""TAID: temporally adaptive interpolated distillation (Shing et al., ICLR 2025).

The student learns KL(p_t ‖ q_θ) towards an intermediate distribution
    p_t = softmax((1 − t) · sg(z_s) + t · z_t)        (logits at config.loss.temperature)
that starts near the student (t = t_start) and moves to the teacher (t = t_end). t never falls
behind the linear schedule t_start + (t_end − t_start) · step / total_steps, and moves ahead of
it while the objective improves: with δ = (J_prev − J) / J_prev and m ← μ·m + (1 − μ)·δ,
    t ← min(t_end, max(t_linear, t + α · sigmoid(m) · (1 − t))).
Paper defaults (config.loss.taid): t_start 0.4, t_end 1.0, α 5e-4, μ 0.99.

The interpolated logits are one linear map of [sg(h_s), h_t] through [(1 − t)·sg(W_s); t·W_t],
so the fused kernel serves TAID too (config.loss.fused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, StatefulLoss, lm, merge_settings, register


def _check(settings, loss_config) -> None:
    if not 0.0 <= settings.t_start < settings.t_end <= 1.0:
        raise DistillError(f"config.loss.taid needs 0 <= t_start < t_end <= 1, got t_start"
                           f" {settings.t_start} and t_end {settings.t_end}")
    if loss_config.divergence != "fkl":
        raise DistillError("TAID's objective is KL(p_t ‖ q): set config.loss.divergence='fkl'")


def next_t(state: dict, objective, step, total_steps: int, settings) -> dict:
    """One adaptive update of t from the objective just measured (skipped when it is not finite)."""
    relative_change = (state["previous"] - objective) / (state["previous"] + 1e-12)
    first = jnp.isinf(state["previous"])
    momentum = jnp.where(first, state["momentum"], settings.momentum * state["momentum"]
                         + (1 - settings.momentum) * relative_change)
    linear = settings.t_start + (settings.t_end - settings.t_start) * (step + 1) / total_steps
    adaptive = state["t"] + settings.alpha * jax.nn.sigmoid(momentum) * (1 - state["t"])
    t = jnp.minimum(settings.t_end, jnp.maximum(linear, jnp.where(first, state["t"], adaptive)))
    updated = {"t": t, "momentum": momentum, "previous": objective}
    return jax.tree.map(lambda new, old: jnp.where(jnp.isfinite(objective), new, old),
                        updated, state)


# TAID's schedule of t: start, end, the adaptive step α and the momentum μ of its update.
SETTINGS = merge_settings(lm.SETTINGS, {"loss": {
    "taid": {"t_start": 0.4, "t_end": 1.0, "alpha": 5e-4, "momentum": 0.99}}})


@register("taid", tasks=("lm",), settings=SETTINGS)
def make_loss(ctx: Context):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    settings = config.loss.taid
    _check(settings, config.loss)
    divergence = lm.TokenDivergence(config.loss, student, teacher)

    def loss_fn(params, teacher_params, batch, rng, step, state):
        del step
        t = state["t"]
        sequence = lm.real_text(batch)
        student_hidden, student_head, teacher_hidden, teacher_head = divergence.hidden_and_heads(
            params, teacher_params, sequence, rng)
        frozen_hidden, frozen_head = jax.lax.stop_gradient((student_hidden, student_head))
        target_hidden = jnp.concatenate(
            [frozen_hidden.astype(teacher_hidden.dtype), teacher_hidden], axis=-1)
        target_head = jnp.concatenate([(1 - t) * frozen_head, t * teacher_head], axis=0)
        value = divergence.from_hidden(student_hidden, student_head, target_hidden, target_head,
                                       sequence.loss_mask)
        return value, {"distill/taid_t": t, **lm.counted(sequence.loss_mask)}

    def init_state(params):
        del params
        return {"t": jnp.float32(settings.t_start), "momentum": jnp.float32(0.0),
                "previous": jnp.float32(jnp.inf)}

    def update_state(state, step, objective, metrics, params, batch):
        del metrics, params, batch
        return next_t(state, objective, step, config.total_steps, settings)

    return StatefulLoss(loss_fn, init_state, update_state)
