"""Continuous-time consistency models in TrigFlow (Lu & Song, ICLR 2025): `scd` distils a
TrigFlow teacher (sCD), `sct` trains from data alone (sCT).

With x_t = cos t·x0 + sin t·z (z ~ N(0, σ_d²)), the student f_θ(x_t, t) = cos t·x_t −
sin t·σ_d·F_θ(x_t/σ_d, t) learns from the tangent of its own stop-gradient copy θ⁻
(Algorithm 1):
    dx_t/dt = σ_d·F_teacher(x_t/σ_d, t)   (sCD)   or   cos t·z − sin t·x0   (sCT)
    cos t·sin t·dF_θ⁻/dt by `jax.jvp` of F_θ⁻ with tangents scaled by cos t·sin t (stable)
    g = −cos²t·(σ_d·F_θ⁻ − dx_t/dt) − r·(cos t·sin t·x_t + σ_d·cos t·sin t·dF_θ⁻/dt)
    g ← g / (‖g‖ + c)                                 (tangent normalisation, c = 0.1)
    loss = e^{w_φ(t)}/D·‖F_θ − F_θ⁻ − g‖² − w_φ(t)    (adaptive weighting, learned w_φ)
with the warm-up r = min(1, step / H) and times tan t = e^τ/σ_d, τ ~ N(P_mean, P_std²). The
params are stopped *before* the JVP, so no backward pass of the JVP is ever built. The student
model needs `adaptive_weight=True` (w_φ is its `log_weight` head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.diffusion.parameterizations import TrigFlow, parameterization, per_example
from jaxdistill.diffusion.sampling import network
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, generative, register


def trigflow_parameterization(config, method: str) -> TrigFlow:
    param = parameterization(config.diffusion)
    if not isinstance(param, TrigFlow):
        raise DistillError(f"method {method!r} works in TrigFlow; set"
                           " config.diffusion.parameterization=trigflow")
    if not config.student.get("adaptive_weight"):
        raise DistillError(f"method {method!r} learns its loss weighting w(t) with the student;"
                           " set config.student.adaptive_weight=True")
    return param


def target_and_tangent(student, frozen_params, param, x_t, t, dxdt, label):
    """(F_θ⁻, cos t·sin t·dF_θ⁻/dt) in one `jax.jvp` through the network, with the inputs the
    parameterization feeds it (x_t/σ_d, time_scale·t): the tangent of (x_t, t) is cos t·sin t
    times (dx_t/dt, 1)."""
    scale = jnp.cos(t) * jnp.sin(t)
    net = network(student, frozen_params, train=True)
    return jax.jvp(lambda x, t: param.raw(net, x, t, label), (x_t, t),
                   (per_example(scale, x_t) * dxdt, scale))


def make(ctx: Context, *, distill: bool):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    method = "scd" if distill else "sct"
    param = trigflow_parameterization(config, method)
    settings = config.consistency
    num_classes = generative.class_count(config)
    sd = param.sigma_data

    def loss_fn(params, teacher_params, batch, rng, step):
        x0 = batch["x"]
        label = generative.class_labels(batch, num_classes)
        time_rng, noise_rng = jax.random.split(rng)
        t = param.sample_time(time_rng, x0.shape[0])
        noise, x_t = generative.noisy_pair(param, x0, t, noise_rng)
        if distill:
            dxdt = param.velocity(network(teacher, teacher_params), x_t, t, label)
        else:
            dxdt = param.flow_velocity(x0, noise, t)
        frozen = jax.lax.stop_gradient(params)
        f_frozen, scaled_tangent = target_and_tangent(student, frozen, param, x_t, t, dxdt,
                                                      label)
        warmup = jnp.minimum(1.0, step / max(settings.tangent_warmup_steps, 1))
        cos, sin = per_example(jnp.cos(t), x_t), per_example(jnp.sin(t), x_t)
        g = -cos ** 2 * (sd * f_frozen - dxdt) - warmup * (cos * sin * x_t + sd * scaled_tangent)
        g_norm = jnp.sqrt(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=-1))
        g = jax.lax.stop_gradient(g / per_example(g_norm + settings.tangent_c, g))
        raw = param.raw(network(student, params, train=True), x_t, t, label)
        target, ok = generative.guard_target(f_frozen + g, raw)
        log_weight = student.apply(params, param.network_inputs(x_t, t)[1], method="log_weight")
        error = generative.mean_squared_error(raw, target)
        loss, nonfinite = generative.finite_mean(jnp.exp(log_weight) * error - log_weight, ok)
        return loss, {"nonfinite": nonfinite, "tangent_norm": jnp.mean(g_norm),
                      "tangent_warmup": warmup}

    return loss_fn


@register("scd", tasks=("generation",), settings=generative.CONSISTENCY_SETTINGS)
def make_scd(ctx: Context):
    generative.check_teacher(ctx)
    return make(ctx, distill=True)


@register("sct", teacher="none", tasks=("generation",), settings=generative.CONSISTENCY_SETTINGS)
def make_sct(ctx: Context):
    return make(ctx, distill=False)
