"""Improved consistency training (Song & Dhariwal, ICLR 2024): consistency models from data
alone, no teacher and no EMA target.

    N(k) = min(s0·2^⌊k/K'⌋, s1) + 1,  K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋   (the discretization curriculum)
    σ_1 < … < σ_N on the Karras grid (ρ = 7);  i ~ p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2·P_std))
                                                        − erf((ln σ_i − P_mean)/(√2·P_std))
    loss = d(f_θ(x + σ_{i+1}·z, σ_{i+1}), f_sg(θ)(x + σ_i·z, σ_i)) / (σ_{i+1} − σ_i)
with d the pseudo-Huber distance (c = 0.00054·√d) and the same z on both sides. Defaults are the
paper's: s0 = 10, s1 = 1280 (config.consistency.curriculum_*), P_mean = −1.1, P_std = 2.0
(config.diffusion.p_*).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdistill.diffusion.parameterizations import EDM, consistency_function
from jaxdistill.diffusion.sampling import network
from jaxdistill.methods import Context, generative, register


def discretization(step, total_steps: int, start: int, end: int):
    """N(k): the number of noise levels at step k, doubling from s0 + 1 to s1 + 1."""
    stages = math.log2(end // start) + 1
    per_stage = max(math.floor(total_steps / stages), 1)
    return jnp.minimum(start * 2 ** (step // per_stage), end) + 1


def karras_levels(param: EDM, num_levels, max_levels: int):
    """σ_1 < … < σ_N for a traced N, padded to `max_levels` (entries past N are repeats)."""
    i = jnp.minimum(jnp.arange(max_levels), num_levels - 1)
    lo, hi = param.sigma_min ** (1 / param.rho), param.sigma_max ** (1 / param.rho)
    return (lo + i / (num_levels - 1) * (hi - lo)) ** param.rho


def level_logits(param: EDM, sigmas, num_levels):
    """log p(i) of iCT's discretised log-normal over the N − 1 intervals; the rest −∞."""
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - param.p_mean) / (math.sqrt(2) * param.p_std))
    mass = cdf[1:] - cdf[:-1]
    valid = jnp.arange(len(mass)) < num_levels - 1
    return jnp.where(valid & (mass > 0), jnp.log(jnp.maximum(mass, 1e-30)), -jnp.inf)


@register("ict", teacher="none", tasks=("generation",), settings=generative.CONSISTENCY_SETTINGS)
def make_loss(ctx: Context):
    config, student = ctx.config, ctx.student
    param = generative.edm_parameterization(config, "ict")
    settings = config.consistency
    max_levels = settings.curriculum_end + 1
    num_classes = generative.class_count(config)

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params
        x0 = batch["x"]
        label = generative.class_labels(batch, num_classes)
        num_levels = discretization(step, config.total_steps, settings.curriculum_start,
                                    settings.curriculum_end)
        sigmas = karras_levels(param, num_levels, max_levels)
        level_rng, noise_rng = jax.random.split(rng)
        i = jax.random.categorical(level_rng, level_logits(param, sigmas, num_levels),
                                   shape=x0.shape[:1])
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # The same noise on both sides of the pair.
        noise, x_next = generative.noisy_pair(param, x0, sigma_next, noise_rng)
        net = network(student, params, train=True)
        online = consistency_function(param, net, x_next, sigma_next, label)
        target, ok = generative.guard_target(jax.lax.stop_gradient(consistency_function(
            param, net, param.noisy(x0, noise, sigma), sigma, label)), online)
        distance = generative.consistency_distance(online, target, settings.metric,
                                                   settings.huber_c)
        loss, nonfinite = generative.finite_mean(distance / (sigma_next - sigma), ok)
        return loss, {"nonfinite": nonfinite, "discretization": num_levels}

    return loss_fn
