"""Trains a diffusion or flow model (the teacher of step distillation) by denoising score
matching in the config's parameterization (`jaxdistill.diffusion`): EDM's λ-weighted denoising
loss, TrigFlow's or flow matching's velocity regression, at log-normal (logit-normal) times."""

from __future__ import annotations

import jax

from jaxdistill import diffusion
from jaxdistill.methods import register


@register("diffusion", needs_teacher=False)
def make_loss(config, student, teacher):
    del teacher
    param = diffusion.parameterization(config.diffusion)
    num_classes = config.student.get("num_classes", 0)

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        x0 = batch["x"]
        time_rng, noise_rng, label_rng = jax.random.split(rng, 3)
        t = param.sample_time(time_rng, x0.shape[0])
        noise = jax.random.normal(noise_rng, x0.shape)
        x_t = param.noisy(x0, noise, t)
        label = diffusion.training_labels(batch, num_classes, config.diffusion.label_dropout,
                                          label_rng)
        raw = param.raw(diffusion.network(student, params, train=True), x_t, t, label)
        loss, nonfinite = diffusion.finite_mean(param.training_loss(raw, x0, noise, x_t, t))
        return loss, {"nonfinite": nonfinite}

    return loss_fn
