"""Noise parameterizations: how data and noise mix at time t, what a denoiser network sees, what
its raw output means, and which ODE carries noise to data.

A denoiser network is called as `net(x_in, c_noise, label) -> raw` (see `models.denoisers`):
- `edm` (Karras et al. 2022): x_t = x + t·ε with t = σ ∈ [σ_min, σ_max]; raw output
  preconditioned with c_skip, c_out, c_in, c_noise = ¼·ln σ; ODE dx/dσ = (x − D(x, σ)) / σ.
- `trigflow` (Lu & Song 2024): x_t = cos t·x + sin t·z with z ~ N(0, σ_d²); the network
  predicts the velocity dx/dt = σ_d·F(x_t / σ_d, t), t ∈ [0, π/2].
- `flow` (rectified flow / flow matching): x_t = (1 − t)·x + t·ε, velocity ε − x, t ∈ [0, 1].
Time grids for sampling follow EDM's ρ = 7 spacing in noise level for edm and trigflow and
are uniform for flow; every grid ends at the data (t = 0). Beside the denoiser and the velocity,
a network's output is read as a consistency function (`consistency_function`, edm and
trigflow) or as MeanFlow's average velocity over an interval (`average_velocity`, flow).
"""

from __future__ import annotations

import dataclasses
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


def _mean_over_features(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


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


def consistency_function(param: Parameterization, net: Net, x, t, label=None) -> jax.Array:
    """f(x, t): the consistency model's estimate of the data at the end of x's trajectory."""
    return param.consistency_from_raw(param.raw(net, x, t, label), x, t)


def average_velocity(param: Parameterization, net: Net, x, r, t, label=None) -> jax.Array:
    """MeanFlow's u(z_t, r, t): the network conditioned on t and on the interval t − r."""
    c_in, c_noise = param.network_inputs(x, t)
    interval = param.time_scale * (t - r)
    return net(c_in * x, c_noise, label, interval=interval).astype(jnp.float32)
