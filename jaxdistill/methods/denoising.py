"""Trains a diffusion or flow model (the teacher of step distillation) by denoising score
matching in the config's parameterization (`jaxdistill.diffusion.parameterizations`): EDM's
λ-weighted denoising loss, TrigFlow's or flow matching's velocity regression, at log-normal
(logit-normal) times, with a share of the labels dropped for classifier-free guidance."""

from __future__ import annotations

import jax

from jaxdistill.diffusion.parameterizations import parameterization
from jaxdistill.diffusion.sampling import network
from jaxdistill.methods import Context, generative, register


@register("denoising", teacher="none", tasks=("generation",), settings=generative.SETTINGS)
def make_loss(ctx: Context):
    config, student = ctx.config, ctx.student
    param = parameterization(config.diffusion)
    num_classes = generative.class_count(config)

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        time_rng, noise_rng, label_rng = jax.random.split(rng, 3)
        label = generative.dropped_labels(batch, num_classes, config.diffusion.label_dropout,
                                          label_rng)
        result = generative.denoising_loss(param, network(student, params, train=True),
                                           batch["x"], label, time_rng, noise_rng)
        return result.loss, {"nonfinite": result.nonfinite}

    return loss_fn
