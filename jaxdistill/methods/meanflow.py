"""Mean Flows for one-step generation (Geng, Deng, Bai, Kolter & He, 2025).

The network u_θ(z_t, r, t) learns the average velocity over [r, t] of the flow
z_t = (1 − t)·x + t·ε (velocity v = ε − x), from the MeanFlow identity
    u(z_t, r, t) = v(z_t, t) − (t − r)·du/dt,    du/dt = v·∂_z u + ∂_t u,
with du/dt from one `jax.jvp` along (v, 0, 1) through the network (with the params stopped
first, so the JVP is never differentiated):
    loss = sg(w)·‖u_θ − sg(v − (t − r)·du/dt)‖²,   w = 1/(‖Δ‖² + c)^p   (adaptive weighting).
t and r are logit-normal (−0.4, 1.0) draws sorted so r ≤ t, and r = t for all but `ratio` of the
pairs (the paper's 25%); the network sees t and t − r. One step samples x = ε − u(ε, 0, 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.diffusion.parameterizations import (
    Flow,
    Parameterization,
    average_velocity,
    parameterization,
    per_example,
)
from jaxdistill.diffusion.sampling import network
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, generative, register


def time_pairs(param: Parameterization, rng, n: int, ratio: float):
    """(r, t) with r ≤ t, and r = t for all but a `ratio` share of them."""
    first, second, pick = jax.random.split(rng, 3)
    a, b = param.sample_time(first, n), param.sample_time(second, n)
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    return jnp.where(jax.random.uniform(pick, (n,)) < ratio, r, t), t


def velocity_derivative(param: Parameterization, net, z, r, t, v, label=None):
    """(u(z, r, t), du/dt along the flow): one `jax.jvp` through the network along (v, 0, 1),
    with the inputs the parameterization feeds it (both of its times move with t)."""
    return jax.jvp(lambda z, r, t: average_velocity(param, net, z, r, t, label),
                   (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))


# The share of pairs with r ≠ t (`ratio`), and the adaptive loss weight 1/(‖Δ‖² + c)^p
# (`adaptive_p`, `adaptive_c`).
SETTINGS = {**generative.SETTINGS,
            "meanflow": {"ratio": 0.25, "adaptive_p": 1.0, "adaptive_c": 1e-3}}


@register("meanflow", teacher="none", tasks=("generation",), settings=SETTINGS)
def make_loss(ctx: Context):
    config, student = ctx.config, ctx.student
    param = parameterization(config.diffusion)
    if not isinstance(param, Flow) or not config.student.get("interval_conditioning"):
        raise DistillError("method 'meanflow' models the linear flow with a two-time network; set"
                           " config.diffusion.parameterization=flow and"
                           " config.student.interval_conditioning=True")
    settings = config.meanflow
    num_classes = generative.class_count(config)

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        x0 = batch["x"]
        label = generative.class_labels(batch, num_classes)
        time_rng, noise_rng = jax.random.split(rng)
        r, t = time_pairs(param, time_rng, x0.shape[0], settings.ratio)
        noise, z = generative.noisy_pair(param, x0, t, noise_rng)
        v = noise - x0

        frozen = network(student, jax.lax.stop_gradient(params), train=True)
        _, dudt = velocity_derivative(param, frozen, z, r, t, v, label)
        u = average_velocity(param, network(student, params, train=True), z, r, t, label)
        target, ok = generative.guard_target(
            jax.lax.stop_gradient(v - per_example(t - r, z) * dudt), u)
        error = jnp.sum(jnp.reshape(u - target, (z.shape[0], -1)) ** 2, axis=-1)
        weight = jax.lax.stop_gradient(
            1.0 / (error + settings.adaptive_c) ** settings.adaptive_p)
        loss, nonfinite = generative.finite_mean(weight * error, ok)
        return loss, {"nonfinite": nonfinite, "squared_error": jnp.mean(error)}

    return loss_fn
