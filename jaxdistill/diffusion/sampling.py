"""Sampling a diffusion, flow, consistency or MeanFlow model: the network of a denoiser's params
(with classifier-free guidance), ODE steps, the samplers, their network evaluations (NFE), and
the check that a sampling setting is usable before anything compiles."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.diffusion.parameterizations import (
    Flow,
    Net,
    Parameterization,
    average_velocity,
    consistency_function,
    per_example,
)
from jaxdistill.errors import DistillError

SAMPLERS = ("euler", "heun", "consistency", "meanflow")
Velocity = Callable[[jax.Array, jax.Array], jax.Array]  # dx/dt = velocity(x, t)


def network(module, params, guidance: float = 1.0, num_classes: int = 0, *,
            train: bool = False) -> Net:
    """`net(x_in, c_noise, label)` of a denoiser module's params; with guidance w ≠ 1 on a
    class-conditional model, classifier-free guidance raw_u + w·(raw_c − raw_u)."""

    def net(x_in, c_noise, label=None, interval=None):
        def apply(label):
            return module.apply(params, x_in, c_noise, label, train=train,
                                interval=interval).astype(jnp.float32)

        if guidance == 1.0 or label is None or not num_classes:
            return apply(label)
        unconditional = apply(jnp.full_like(label, num_classes))
        return unconditional + guidance * (apply(label) - unconditional)

    return net


def ode_step(velocity: Velocity, x: jax.Array, t: jax.Array, t_next: jax.Array,
             solver: str = "heun") -> jax.Array:
    """One step of dx/dt = velocity(x, t) from per-example times t to t_next ([B] each).

    `heun` is EDM's second-order step, except into t = 0, where it is an Euler step (EDM's
    σ = 0 is outside the network's domain; the unused corrector is evaluated at a floor so it
    stays finite)."""
    if solver not in ("euler", "heun"):
        raise DistillError(f"unknown ODE solver {solver!r}; choose euler or heun")
    dt = per_example(t_next - t, x)
    v = velocity(x, t)
    x_euler = x + dt * v
    if solver == "euler":
        return x_euler
    v_next = velocity(x_euler, jnp.maximum(t_next, 1e-6))
    return jnp.where(per_example(t_next, x) > 0, x + dt * 0.5 * (v + v_next), x_euler)


def solve_ode(velocity: Velocity, x: jax.Array, grid: np.ndarray,
              solver: str = "heun") -> jax.Array:
    """Integrates dx/dt = velocity(x, t) along `grid` (decreasing times, ending at 0): N
    intervals cost `nfe(N, solver)` network evaluations."""
    batch = x.shape[:1]

    def step(x, times):
        t, t_next = times
        return ode_step(velocity, x, jnp.full(batch, t), jnp.full(batch, t_next), solver), None

    times = jnp.stack([jnp.asarray(grid[:-1]), jnp.asarray(grid[1:])], axis=-1)
    return jax.lax.scan(step, x, times)[0]


def nfe(steps: int, sampler: str) -> int:
    """Network evaluations of `sample` in `steps` steps of `sampler`: one per step, but Heun's
    two per step except the last (an Euler step into the data)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def consistency_times(param: Parameterization, steps: int, intermediate=()) -> np.ndarray:
    """The times multistep consistency sampling denoises at: t_max, then the first steps − 1
    of `intermediate`, or when none are given the inner levels of a Karras grid of steps + 1
    levels (σ ≈ 2.5 for two steps over EDM's range)."""
    if not intermediate:
        return param.grid(steps + 1)[:steps]
    if len(intermediate) < steps - 1:
        raise DistillError(f"{steps}-step consistency sampling needs {steps - 1} intermediate"
                           f" times; config.generation.times has {len(intermediate)}")
    return np.array([param.t_max, *intermediate[:steps - 1]], np.float32)


def check_sampling(param: Parameterization, sampler: str, steps: int, times=()) -> None:
    """Refuses, before anything compiles, a sampler, step count or time list that `sample`
    cannot use."""
    if sampler not in SAMPLERS:
        raise DistillError(f"unknown sampler {sampler!r} (config.generation.sampler); choose one"
                           f" of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise DistillError(f"config.generation.steps={steps} must be at least 1")
    if sampler == "consistency":
        if not hasattr(param, "consistency_from_raw"):
            raise DistillError(f"consistency sampling needs a consistency parameterization (edm or"
                               f" trigflow), not {param.name}")
        consistency_times(param, steps, times)
    if sampler == "meanflow" and not isinstance(param, Flow):
        raise DistillError("meanflow sampling reads the average velocity of the linear flow; set"
                           " config.diffusion.parameterization=flow")


def sample(param: Parameterization, net: Net, rng: jax.Array, shape, label=None, *,
           sampler: str = "heun", steps: int = 18, times=()) -> jax.Array:
    """`shape` samples from noise in `steps` steps of `sampler`:
    - `euler` / `heun`: the probability-flow ODE of a diffusion or flow model (`solve_ode`);
    - `consistency`: multistep consistency sampling (Song et al. 2023, Alg. 1): denoise in one
      jump, re-noise to the next time, jump again;
    - `meanflow`: x_r = x_t − (t − r)·u(x_t, r, t) with the average velocity u (Geng et al.)."""
    check_sampling(param, sampler, steps, times)
    noise_rng, rng = jax.random.split(rng)
    x = param.prior(noise_rng, shape)
    if sampler in ("euler", "heun"):
        return solve_ode(lambda x, t: param.velocity(net, x, t, label), x, param.grid(steps),
                         sampler)
    if sampler == "consistency":
        return _consistency_sample(param, net, rng, x, label, steps, times)
    return _meanflow_sample(param, net, x, label, steps)


def _consistency_sample(param, net, rng, x, label, steps, times) -> jax.Array:
    batch = x.shape[:1]
    denoised = None
    for index, t in enumerate(consistency_times(param, steps, times)):
        t = jnp.full(batch, t)
        if index:
            x = param.noisy(denoised, jax.random.normal(jax.random.fold_in(rng, index), x.shape),
                            t)
        denoised = consistency_function(param, net, x, t, label)
    return denoised


def _meanflow_sample(param, net, x, label, steps) -> jax.Array:
    batch = x.shape[:1]
    grid = param.grid(steps)
    for t, r in zip(grid[:-1], grid[1:]):
        t, r = jnp.full(batch, t), jnp.full(batch, r)
        u = average_velocity(param, net, x, r, t, label)
        x = x - per_example(t - r, x) * u
    return x
