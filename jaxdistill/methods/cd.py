"""Consistency distillation (Song, Dhariwal, Chen & Sutskever, ICML 2023, Algorithm 2).

From a pretrained EDM teacher, the student f_θ(x, σ) = c_skip(σ)·x + c_out(σ)·F_θ(x, σ) (with
the boundary scalings that make f(x, σ_min) = x) learns to map every point of a teacher ODE
trajectory to the same end:
    n ~ U{1, …, N−1},  x_{n+1} = x + σ_{n+1}·z,
    x̂_n = one Heun step of the teacher's ODE from σ_{n+1} to σ_n,
    loss = d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)),
over the Karras grid of N levels (config.consistency.discretization, the paper's 18 on
CIFAR-10), with the target θ⁻ an EMA of θ with rate μ (config.consistency.target_ema, 0.95)
kept in the method state, and d the squared L2 (the paper's LPIPS needs an ImageNet network
that does not exist offline; `pseudo_huber` is iCT's alternative). The student starts as a
copy of the teacher (config.student_init.from_teacher).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill.diffusion.parameterizations import consistency_function
from jaxdistill.diffusion.sampling import network, ode_step
from jaxdistill.methods import Context, StatefulLoss, generative, register


@register("cd", tasks=("generation",), settings=generative.CONSISTENCY_SETTINGS)
def make_loss(ctx: Context):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    generative.check_teacher(ctx)
    param = generative.edm_parameterization(config, "cd")
    settings = config.consistency
    sigmas = jnp.asarray(np.sort(param.karras_sigmas(settings.discretization)), jnp.float32)
    num_classes = generative.class_count(config)

    def loss_fn(params, teacher_params, batch, rng, step, target_params):
        del step
        x0 = batch["x"]
        label = generative.class_labels(batch, num_classes)
        level_rng, noise_rng = jax.random.split(rng)
        n = jax.random.randint(level_rng, x0.shape[:1], 0, len(sigmas) - 1)
        sigma, sigma_next = sigmas[n], sigmas[n + 1]
        _, x_next = generative.noisy_pair(param, x0, sigma_next, noise_rng)
        teacher_net = network(teacher, teacher_params)
        x_hat = ode_step(lambda x, t: param.velocity(teacher_net, x, t, label), x_next,
                         sigma_next, sigma, "heun")
        online = consistency_function(param, network(student, params, train=True), x_next,
                                      sigma_next, label)
        target, ok = generative.guard_target(jax.lax.stop_gradient(consistency_function(
            param, network(student, target_params), x_hat, sigma, label)), online)
        loss, nonfinite = generative.finite_mean(generative.consistency_distance(
            online, target, settings.metric, settings.huber_c), ok)
        return loss, {"nonfinite": nonfinite}

    def init_state(params):
        return jax.tree.map(jnp.copy, params)

    def update_state(target_params, step, loss, metrics, params, batch):
        del step, loss, metrics, batch
        return optax.incremental_update(params, target_params, 1.0 - settings.target_ema)

    return StatefulLoss(loss_fn, init_state, update_state)
