"""What the generative methods share: the diffusion settings, the check that a teacher's outputs
mean what the student will read them as, and the pieces of their losses (conditional labels, the
noisy pair, denoising score matching, guarded targets, the mean over finite examples).

`diffusion`: the parameterization (edm, trigflow or flow) with its noise range, the log-normal
training-noise distribution (p_mean, p_std), the scale of the time the network embeds
(`Parameterization.time_scale`) and the share of labels dropped for classifier-free guidance.
`generation`: how a model samples at evaluation: sampler (euler, heun, consistency, meanflow),
steps, guidance scale, the intermediate times of multistep consistency sampling (empty:
spaced like the Karras grid), and `fd_classifier`, a classifier run whose penultimate features
score the samples by FD at evaluation besides SWD (empty: SWD only).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jaxdistill.diffusion.parameterizations import (
    EDM,
    Net,
    Parameterization,
    parameterization,
    per_example,
)
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context

SETTINGS = {
    "diffusion": {"parameterization": "edm", "sigma_data": 0.5, "sigma_min": 0.002,
                  "sigma_max": 80.0, "rho": 7.0, "p_mean": -1.2, "p_std": 1.2,
                  "time_scale": 1000.0, "label_dropout": 0.0},
    "generation": {"sampler": "heun", "steps": 18, "guidance": 1.0, "times": (),
                   "fd_classifier": ""},
}

# What a diffusion teacher's outputs mean: a student reading them under other settings would
# silently get garbage velocities.
_TEACHER_KEYS = ("parameterization", "sigma_data", "sigma_min", "sigma_max", "time_scale")


# Consistency models (cd, ict, sCD/sCT). cd: `discretization` N noise levels, EMA `target_ema` μ
# of the target network, distance `metric` (l2 or pseudo_huber, whose c is `huber_c`, 0 for
# iCT's 0.00054·√d). ict: discretization curriculum from `curriculum_start` s0 to
# `curriculum_end` s1 levels. sCD and sCT: tangent warm-up over `tangent_warmup_steps`, tangent
# normalisation constant `tangent_c`.
CONSISTENCY_SETTINGS = {**SETTINGS, "consistency": {
    "discretization": 18, "target_ema": 0.95, "metric": "l2", "huber_c": 0.0,
    "curriculum_start": 10, "curriculum_end": 1280, "tangent_warmup_steps": 1000,
    "tangent_c": 0.1}}


def check_teacher(ctx: Context) -> None:
    """A teacher run must share the student's parameterization and time embedding."""
    teacher = ctx.teacher_config and ctx.teacher_config.get("diffusion")
    if teacher is None:
        return
    config = ctx.config
    for key in _TEACHER_KEYS:
        if teacher.get(key) != config.diffusion[key]:
            raise DistillError(
                f"the teacher at {config.teacher.checkpoint} was trained with diffusion.{key}="
                f"{teacher.get(key)!r} but this run sets {config.diffusion[key]!r}; set"
                f" config.diffusion.{key}={teacher.get(key)!r} (or train a teacher with it)")


def edm_parameterization(config: ml_collections.ConfigDict, method: str) -> EDM:
    """The config's parameterization, which `method` needs to be EDM."""
    param = parameterization(config.diffusion)
    if not isinstance(param, EDM):
        raise DistillError(f"method {method!r} works in the EDM parameterization; set"
                           " config.diffusion.parameterization=edm (scd is the TrigFlow one)")
    return param


def class_count(config: ml_collections.ConfigDict) -> int:
    """The student's number of classes; 0 for an unconditional model."""
    return config.student.get("num_classes", 0)


def class_labels(batch: dict, num_classes: int) -> jax.Array | None:
    """The batch's labels for a class-conditional model; None for an unconditional one."""
    return batch.get("label") if num_classes else None


def dropped_labels(batch: dict, num_classes: int, dropout: float,
                   rng: jax.Array) -> jax.Array | None:
    """The batch's labels, each replaced by the "no class" id with probability `dropout` (so one
    network learns the unconditional model that classifier-free guidance needs); None for an
    unconditional model."""
    label = class_labels(batch, num_classes)
    if label is None:
        return None
    return jnp.where(jax.random.uniform(rng, label.shape) < dropout, num_classes, label)


def noisy_pair(param: Parameterization, x0: jax.Array, t: jax.Array,
               rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(noise, x_t): a standard normal draw of x0's shape and x0 noised with it at times t."""
    noise = jax.random.normal(rng, x0.shape)
    return noise, param.noisy(x0, noise, t)


class DenoisingLoss(NamedTuple):
    """`denoising_loss`'s value and the noised data it was measured on."""

    loss: jax.Array       # the mean over the finite rows
    nonfinite: jax.Array  # how many rows were left out
    t: jax.Array          # the training times drawn
    x_t: jax.Array        # the data noised at them (what DMD2's discriminator also reads)


def denoising_loss(param: Parameterization, net: Net, x0: jax.Array, label: jax.Array | None,
                   time_rng: jax.Array, noise_rng: jax.Array) -> DenoisingLoss:
    """Denoising score matching of `net` on the data x0 at training times: the
    parameterization's own loss (EDM's λ-weighted denoising error, velocity regression for
    TrigFlow and flow). It trains the `denoising` teacher and DMD2's fake score."""
    t = param.sample_time(time_rng, x0.shape[0])
    noise, x_t = noisy_pair(param, x0, t, noise_rng)
    raw = param.raw(net, x_t, t, label)
    loss, nonfinite = finite_mean(param.training_loss(raw, x0, noise, x_t, t))
    return DenoisingLoss(loss, nonfinite, t, x_t)


def guard_target(target: jax.Array, online: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(target, ok): rows of a (stop-gradient) regression target that are not finite (a NaN
    teacher output or tangent at an extreme time) are replaced by the online prediction itself,
    so they contribute zero loss AND zero gradient; masking the loss alone would not keep the
    NaN out of the backward pass (0 · NaN is NaN). `ok` marks the rows that were kept."""
    ok = jnp.all(jnp.isfinite(jnp.reshape(target, (target.shape[0], -1))), axis=-1)
    return jnp.where(per_example(ok, target), target, jax.lax.stop_gradient(online)), ok


def finite_mean(values: jax.Array, ok: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The mean of per-example losses over the rows `ok` (default: the finite ones), and how
    many rows were left out: one diverged sample is dropped instead of poisoning the step."""
    ok = jnp.isfinite(values) if ok is None else ok & jnp.isfinite(values)
    total = jnp.sum(jnp.where(ok, values, 0.0))
    return total / jnp.maximum(jnp.sum(ok), 1), jnp.sum(~ok)


def mean_squared_error(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """The per-example mean over features of (prediction − target)²."""
    return jnp.mean(jnp.reshape(prediction - target, (prediction.shape[0], -1)) ** 2, axis=-1)


def consistency_distance(online: jax.Array, target: jax.Array, metric: str,
                         huber_c: float = 0.0) -> jax.Array:
    """Per-example distance of a consistency pair: `l2` the squared error (mean over
    features), `pseudo_huber` √(‖x − y‖² + c²) − c (iCT) with c = 0.00054·√d unless given."""
    if metric == "l2":
        return mean_squared_error(online, target)
    if metric == "pseudo_huber":
        diff = jnp.reshape(online - target, (online.shape[0], -1))
        c = huber_c or 0.00054 * math.sqrt(diff.shape[-1])
        return jnp.sqrt(jnp.sum(diff ** 2, axis=-1) + c ** 2) - c
    raise DistillError(f"unknown config.consistency.metric {metric!r}; choose l2 or pseudo_huber")
