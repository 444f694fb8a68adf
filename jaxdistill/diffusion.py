"""Diffusion and flow models: noise parameterizations, ODE samplers and the sliced Wasserstein
distance, shared by the `diffusion` teacher method and every step-distillation method.

A denoiser network is called as `net(x_in, c_noise, label) -> raw` (see `models.denoisers`);
a `Parameterization` says how data and noise mix at time t, what the network sees, what its
raw output means, and which ODE carries noise to data:
- `edm` (Karras et al. 2022): x_t = x + t·ε with t = σ ∈ [σ_min, σ_max]; raw output
  preconditioned with c_skip, c_out, c_in, c_noise = ¼·ln σ; ODE dx/dσ = (x − D(x, σ)) / σ.
- `trigflow` (Lu & Song 2024): x_t = cos t·x + sin t·z with z ~ N(0, σ_d²); the network
  predicts the velocity dx/dt = σ_d·F(x_t / σ_d, t), t ∈ [0, π/2].
- `flow` (rectified flow / flow matching): x_t = (1 − t)·x + t·ε, velocity ε − x, t ∈ [0, 1].
Time grids for sampling follow EDM's ρ = 7 spacing in noise level for edm and trigflow and
are uniform for flow; every grid ends at the data (t = 0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdistill.errors import DistillError

# raw = net(x_in, c_noise, label): the network as the parameterizations call it.
Net = Callable[[jax.Array, jax.Array, Any], jax.Array]



def per_example(t: jax.Array, x: jax.Array) -> jax.Array:
    """A per-example time [B] broadcast against x [B, ...]."""
    return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """How data and noise mix at time t; subclasses fill in the formulas below."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    # c_noise = time_scale·(the time): the denoisers embed it positionally in float32, so the
    # scale sets how fast the embedding turns with time. Large scales spread times over all
    # frequencies; JVP-trained models (sCM, MeanFlow) need small ones, or dF/dt is dominated by
    # the fastest frequencies (sCM §4.1).
    time_scale: float = 1000.0

    name = ""
    t_max = 0.0  # the noise end of time (a property where it depends on the settings)

    def sample_time(self, rng: jax.Array, n: int) -> jax.Array:
        """Training times: log-normal noise levels (σ = e^τ, τ ~ N(p_mean, p_std²))."""
        return self.time_of_sigma(jnp.exp(self.p_mean + self.p_std * jax.random.normal(rng, (n,))))

    def prior(self, rng: jax.Array, shape) -> jax.Array:
        """A draw of x at t_max (pure noise)."""
        return self.noisy(jnp.zeros(shape), jax.random.normal(rng, shape),
                          jnp.full(shape[:1], self.t_max))

    def karras_sigmas(self, steps: int) -> np.ndarray:
        ramp = np.linspace(0.0, 1.0, steps)
        inv_rho = 1.0 / self.rho
        return (self.sigma_max ** inv_rho
                + ramp * (self.sigma_min ** inv_rho - self.sigma_max ** inv_rho)) ** self.rho

    def grid(self, steps: int) -> np.ndarray:
        """`steps + 1` times from t_max down to 0 (the data)."""
        return np.append(self.time_of_sigma(self.karras_sigmas(steps)), 0.0).astype(np.float32)

    def raw(self, net: Net, x: jax.Array, t: jax.Array, label=None) -> jax.Array:
        """The network's raw output at (x, t), with the inputs this parameterization feeds it."""
        c_in, c_noise = self.network_inputs(x, t)
        return net(c_in * x, c_noise, label).astype(jnp.float32)

    def velocity(self, net: Net, x, t, label=None) -> jax.Array:
        return self.velocity_from_raw(self.raw(net, x, t, label), x, t)

    def denoise(self, net: Net, x, t, label=None) -> jax.Array:
        return self.denoised_from_raw(self.raw(net, x, t, label), x, t)

    # Subclasses: time_of_sigma, noisy, network_inputs, velocity_from_raw, denoised_from_raw,
    # training_loss, consistency_from_raw.


@dataclasses.dataclass(frozen=True)
class EDM(Parameterization):
    name = "edm"

    @property
    def t_max(self):
        return self.sigma_max

    def time_of_sigma(self, sigma):
        return sigma

    def noisy(self, x, noise, t):
        return x + per_example(t, x) * noise

    def network_inputs(self, x, t):
        sigma = per_example(t, x)
        c_in = 1.0 / jnp.sqrt(sigma ** 2 + self.sigma_data ** 2)
        return c_in, self.time_scale * 0.25 * jnp.log(t)

    def _scalings(self, sigma, sigma_floor=0.0):
        """(c_skip, c_out); with sigma_floor = σ_min the consistency-model boundary scalings
        (f(x, σ_min) = x exactly)."""
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / ((sigma - sigma_floor) ** 2 + sd2)
        c_out = (sigma - sigma_floor) * self.sigma_data / jnp.sqrt(sigma ** 2 + sd2)
        return c_skip, c_out

    def denoised_from_raw(self, raw, x, t):
        c_skip, c_out = self._scalings(per_example(t, x))
        return c_skip * x + c_out * raw

    def consistency_from_raw(self, raw, x, t):
        c_skip, c_out = self._scalings(per_example(t, x), self.sigma_min)
        return c_skip * x + c_out * raw

    def velocity_from_raw(self, raw, x, t):
        return (x - self.denoised_from_raw(raw, x, t)) / per_example(t, x)

    def training_loss(self, raw, x0, noise, x_t, t):
        """EDM's λ(σ)-weighted denoising error; λ makes the raw output's target unit-variance."""
        sigma = per_example(t, x0)
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return _mean_over_features(weight * (self.denoised_from_raw(raw, x_t, t) - x0) ** 2)


@dataclasses.dataclass(frozen=True)
class TrigFlow(Parameterization):
    p_mean: float = -1.0
    p_std: float = 1.4
    name = "trigflow"

    @property
    def t_max(self):
        return float(np.arctan(self.sigma_max / self.sigma_data))

    def time_of_sigma(self, sigma):
        """TrigFlow time of EDM noise level σ: tan t = σ / σ_d (same signal-to-noise ratio)."""
        return jnp.arctan(sigma / self.sigma_data) if isinstance(sigma, jax.Array) else np.arctan(
            sigma / self.sigma_data)

    def noisy(self, x, noise, t):
        t = per_example(t, x)
        return jnp.cos(t) * x + jnp.sin(t) * self.sigma_data * noise

    def network_inputs(self, x, t):
        return 1.0 / self.sigma_data, self.time_scale * t

    def velocity_from_raw(self, raw, x, t):
        return self.sigma_data * raw

    def denoised_from_raw(self, raw, x, t):
        t = per_example(t, x)
        return jnp.cos(t) * x - jnp.sin(t) * self.sigma_data * raw

    consistency_from_raw = denoised_from_raw  # sCM: f(x_t, t) is the TrigFlow denoiser

    def training_loss(self, raw, x0, noise, x_t, t):
        target = self.flow_velocity(x0, noise, t)
        return _mean_over_features((self.sigma_data * raw - target) ** 2) / self.sigma_data ** 2

    def flow_velocity(self, x0, noise, t):
        """dx_t/dt of the pair (x0, noise): the conditional velocity cos t·z − sin t·x0."""
        t = per_example(t, x0)
        return jnp.cos(t) * self.sigma_data * noise - jnp.sin(t) * x0


@dataclasses.dataclass(frozen=True)
class Flow(Parameterization):
    p_mean: float = -0.4
    p_std: float = 1.0
    name = "flow"
    t_max = 1.0

    def sample_time(self, rng, n):
        """Logit-normal times (Esser et al. 2024; MeanFlow's default lognorm(−0.4, 1.0))."""
        return jax.nn.sigmoid(self.p_mean + self.p_std * jax.random.normal(rng, (n,)))

    def grid(self, steps):
        return np.linspace(1.0, 0.0, steps + 1).astype(np.float32)

    def noisy(self, x, noise, t):
        t = per_example(t, x)
        return (1.0 - t) * x + t * noise

    def network_inputs(self, x, t):
        return 1.0, self.time_scale * t

    def velocity_from_raw(self, raw, x, t):
        return raw

    def denoised_from_raw(self, raw, x, t):
        return x - per_example(t, x) * raw

    def training_loss(self, raw, x0, noise, x_t, t):
        return _mean_over_features((raw - (noise - x0)) ** 2)


PARAMETERIZATIONS = {p.name: p for p in (EDM, TrigFlow, Flow)}


def parameterization(diffusion_config: ml_collections.ConfigDict) -> Parameterization:
    """The config's parameterization (config.diffusion.parameterization) with its settings."""
    name = diffusion_config.parameterization
    if name not in PARAMETERIZATIONS:
        raise DistillError(f"unknown config.diffusion.parameterization {name!r}; choose one of"
                           f" {', '.join(PARAMETERIZATIONS)}")
    fields = {f.name for f in dataclasses.fields(PARAMETERIZATIONS[name])}
    settings = {key: value for key, value in diffusion_config.items()
                if key in fields and value is not None}
    return PARAMETERIZATIONS[name](**settings)


def _mean_over_features(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def ode_step(velocity: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
             t: jax.Array, t_next: jax.Array, solver: str = "heun") -> jax.Array:
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


def solve_ode(velocity: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
              grid: np.ndarray, solver: str = "heun") -> jax.Array:
    """Integrates dx/dt = velocity(x, t) along `grid` (decreasing times, ending at 0): N
    intervals cost N network evaluations with `euler` and 2N − 1 with `heun` (`nfe`)."""
    batch = x.shape[:1]

    def step(x, times):
        t, t_next = times
        return ode_step(velocity, x, jnp.full(batch, t), jnp.full(batch, t_next), solver), None

    times = jnp.stack([jnp.asarray(grid[:-1]), jnp.asarray(grid[1:])], axis=-1)
    return jax.lax.scan(step, x, times)[0]


def nfe(steps: int, solver: str) -> int:
    """Network evaluations of `solve_ode` over `steps` intervals."""
    return 2 * steps - 1 if solver == "heun" else steps


def sliced_wasserstein(samples: np.ndarray, reference: np.ndarray, projections: int = 1024,
                       seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point sets (flattened per row):
    √(mean over random unit directions of W2² of the 1-D projections), the directions fixed by
    `seed` so every model is scored on the same ones."""
    samples = np.reshape(np.asarray(samples, np.float64), (len(samples), -1))
    reference = np.reshape(np.asarray(reference, np.float64), (len(reference), -1))
    if samples.shape != reference.shape:
        raise DistillError(f"sliced Wasserstein needs equal sets; got {samples.shape} samples"
                           f" and {reference.shape} reference points")
    directions = np.random.default_rng(seed).normal(size=(samples.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    gaps = np.sort(samples @ directions, axis=0) - np.sort(reference @ directions, axis=0)
    return float(math.sqrt(np.mean(gaps ** 2)))


SAMPLERS = ("euler", "heun", "consistency", "meanflow")


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
    batch = shape[:1]
    if sampler == "consistency":
        denoised = None
        for index, t in enumerate(consistency_times(param, steps, times)):
            t = jnp.full(batch, t)
            if index:
                x = param.noisy(denoised, jax.random.normal(jax.random.fold_in(rng, index), shape),
                                t)
            denoised = consistency_function(param, net, x, t, label)
        return denoised
    grid = param.grid(steps)  # meanflow
    for t, r in zip(grid[:-1], grid[1:]):
        t, r = jnp.full(batch, t), jnp.full(batch, r)
        u = average_velocity(param, net, x, r, t, label)
        x = x - per_example(t - r, x) * u
    return x


def average_velocity(param: Parameterization, net: Net, x, r, t, label=None) -> jax.Array:
    """MeanFlow's u(z_t, r, t): the network conditioned on t and on the interval t − r."""
    c_in, c_noise = param.network_inputs(x, t)
    interval = param.time_scale * (t - r)
    return net(c_in * x, c_noise, label, interval=interval).astype(jnp.float32)


def sampler_nfe(sampler: str, steps: int) -> int:
    return nfe(steps, sampler) if sampler in ("euler", "heun") else steps


def training_labels(batch: dict, num_classes: int, dropout: float, rng: jax.Array):
    """The batch's labels for a class-conditional model, each replaced by the "no class" id
    with probability `dropout` (so one network learns the unconditional model that
    classifier-free guidance needs); None for an unconditional model."""
    if not num_classes or "label" not in batch:
        return None
    label = batch["label"]
    return jnp.where(jax.random.uniform(rng, label.shape) < dropout, num_classes, label)


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


def consistency_distance(online: jax.Array, target: jax.Array, metric: str,
                         huber_c: float = 0.0) -> jax.Array:
    """Per-example distance of a consistency pair: `l2` the squared error (mean over
    features), `pseudo_huber` √(‖x − y‖² + c²) − c (iCT) with c = 0.00054·√d unless given."""
    diff = jnp.reshape(online - target, (online.shape[0], -1))
    if metric == "l2":
        return jnp.mean(diff ** 2, axis=-1)
    if metric == "pseudo_huber":
        c = huber_c or 0.00054 * math.sqrt(diff.shape[-1])
        return jnp.sqrt(jnp.sum(diff ** 2, axis=-1) + c ** 2) - c
    raise DistillError(f"unknown config.consistency.metric {metric!r}; choose l2 or pseudo_huber")


def consistency_function(param: Parameterization, net: Net, x, t, label=None) -> jax.Array:
    """f(x, t): the consistency model's estimate of the data at the end of x's trajectory."""
    return param.consistency_from_raw(param.raw(net, x, t, label), x, t)


def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula):
    ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), in float64.

    Tr((Σ₁Σ₂)^½) is computed as Σ √eig(Σ₁^½ Σ₂ Σ₁^½), a symmetric PSD matrix with the same
    spectrum, so singular covariances (ReLU features that never fire, fewer samples than
    dimensions) give an exact answer where a general matrix square root is ill-conditioned."""
    features = np.asarray(features, np.float64)
    reference = np.asarray(reference, np.float64)
    mean_gap = np.sum((features.mean(0) - reference.mean(0)) ** 2)
    cov_a, cov_b = np.cov(features, rowvar=False), np.cov(reference, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    return float(mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
