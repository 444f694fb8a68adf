"""Diffusion teachers and step distillation: parameterizations, samplers, metrics, and every
method's loss meaning what it claims, plus each method training from the CLI."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import cli, methods, train
from jaxdistill import config as config_lib
from jaxdistill.diffusion import distances, parameterizations, sampling
from jaxdistill.errors import DistillError
from jaxdistill.methods import generative, ict, meanflow, scm
from jaxdistill.run import build

PARAMETERIZATIONS = ("edm", "trigflow", "flow")


def _diffusion_config(name, **settings):
    config = methods.base_config("denoising").diffusion
    config.parameterization = name
    config.update(settings)
    return config


def _ideal_raw(param, x, t, denoised):
    """The raw network output whose denoised estimate is `denoised` (the map is affine in raw)."""
    zero = param.denoised_from_raw(jnp.zeros_like(x), x, t)
    slope = param.denoised_from_raw(jnp.ones_like(x), x, t) - zero
    return (denoised - zero) / slope


def _context(config, module):
    """What a method's factory reads, for losses that read neither a teacher nor the dataset."""
    return methods.Context(config=config, student=module, teacher=None, dataset=None)


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("name", PARAMETERIZATIONS)
def test_the_ideal_output_has_zero_loss_and_the_pair_velocity(name):
    """For one (data, noise) pair, the raw output that denoises exactly has zero training loss
    and its ODE velocity is the pair's dx_t/dt (checked by jvp of `noisy` along t)."""
    param = parameterizations.parameterization(_diffusion_config(name, sigma_data=0.7))
    x0, noise = _random((6, 3), 0), _random((6, 3), 1)
    t = param.sample_time(jax.random.key(2), 6)
    x_t = param.noisy(x0, noise, t)
    raw = _ideal_raw(param, x_t, t, x0)
    np.testing.assert_allclose(param.training_loss(raw, x0, noise, x_t, t), 0.0, atol=1e-8)
    _, pair_velocity = jax.jvp(lambda t: param.noisy(x0, noise, t), (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(param.velocity_from_raw(raw, x_t, t), pair_velocity,
                               rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", PARAMETERIZATIONS)
def test_the_ode_of_the_exact_denoiser_converges_to_the_exact_map(name):
    """Data N(0, s²): E[x0 | x_t] = α·s²/(α²s² + σ²)·x_t is known, and the probability-flow ODE
    then just rescales each noise draw by s/√(α²s² + σ²) at t_max. The samplers fed with the exact
    denoiser must approach that map as steps grow, Heun faster than Euler."""
    data_std = 0.6
    param = parameterizations.parameterization(_diffusion_config(name, sigma_data=0.5))
    alpha, sigma = _mixing(param)

    def velocity(x, t):
        a, s = alpha(t)[:, None], sigma(t)[:, None]
        denoised = a * data_std ** 2 / (a ** 2 * data_std ** 2 + s ** 2) * x
        return param.velocity_from_raw(_ideal_raw(param, x, t, denoised), x, t)

    x = param.prior(jax.random.key(0), (512, 2))
    t_max = jnp.full((1,), param.t_max)
    exact = x * data_std / jnp.sqrt(alpha(t_max) ** 2 * data_std ** 2 + sigma(t_max) ** 2)

    def error(steps, solver):
        solved = sampling.solve_ode(velocity, x, param.grid(steps), solver)
        return float(jnp.max(jnp.abs(solved - exact)) / jnp.max(jnp.abs(exact)))

    heun = [error(steps, "heun") for steps in (4, 18, 100)]
    assert heun[0] > heun[1] > heun[2] and heun[2] < 5e-3, heun
    assert error(100, "euler") > heun[2]  # first order against second


def _mixing(param):
    """(α(t), σ(t)) of x_t = α·x0 + σ·ε, read off `noisy` itself."""
    def alpha(t):
        return param.noisy(jnp.ones((len(t), 1)), jnp.zeros((len(t), 1)), t)[:, 0]

    def sigma(t):
        return param.noisy(jnp.zeros((len(t), 1)), jnp.ones((len(t), 1)), t)[:, 0]

    return alpha, sigma


def test_nfe_counts_heun_as_two_evaluations_but_the_last():
    assert [sampling.nfe(n, "heun") for n in (1, 2, 18)] == [1, 3, 35]
    assert sampling.nfe(4, "euler") == 4
    assert sampling.nfe(2, "consistency") == 2


def test_consistency_function_is_the_identity_at_the_smallest_noise():
    param = parameterizations.parameterization(_diffusion_config("edm"))
    x = _random((4, 2), 0)
    t = jnp.full((4,), param.sigma_min)
    np.testing.assert_allclose(param.consistency_from_raw(_random((4, 2), 1), x, t), x,
                               atol=1e-6)


def test_sliced_wasserstein_is_zero_for_equal_sets_and_sees_a_shift():
    points = np.random.default_rng(0).normal(size=(4000, 2))
    assert distances.sliced_wasserstein(points, points[::-1]) == pytest.approx(0.0, abs=1e-12)
    # A shift c moves each 1-D projection by c·u; over unit directions E[(c·u)²] = ‖c‖²/2.
    shift = np.array([0.3, -0.4])
    assert distances.sliced_wasserstein(points + shift, points) == pytest.approx(
        0.5 / np.sqrt(2), rel=0.03)
    with pytest.raises(DistillError, match="equal sets"):
        distances.sliced_wasserstein(points, points[:10])


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """N(0, I) against N(m, s²·I) in d dims: ‖m‖² + d·(1 − s)²."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40_000, 3))
    b = 0.5 * rng.normal(size=(40_000, 3)) + np.array([1.0, -1.0, 0.0])
    assert distances.frechet_distance(a, b) == pytest.approx(2.0 + 3 * 0.25, rel=0.02)
    assert distances.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_dit_attention_through_the_flash_kernel_equals_naive():
    """The DiT's attention gives the same output, JVP and gradient through the flash kernel
    as through the naive reference."""
    from jaxdistill.models.denoisers import Attention

    x = _random((2, 16, 32), 0)
    flash, naive = Attention(32, 4, attention="flash"), Attention(32, 4, attention="naive")
    params = flash.init(jax.random.key(1), x)
    tangent = _random((2, 16, 32), 2)
    for fn in (lambda m: m.apply(params, x),
               lambda m: jax.jvp(lambda x: m.apply(params, x), (x,), (tangent,))[1],
               lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) * tangent))(params)):
        for got, want in zip(jax.tree.leaves(fn(flash)), jax.tree.leaves(fn(naive))):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ict_curriculum_doubles_from_s0_to_s1():
    total = 8000
    levels = [int(ict.discretization(k, total, 10, 1280)) for k in (0, 999, 1000, 7999)]
    # K' = ⌊8000 / (log2⌊1280/10⌋ + 1)⌋ = 1000: 11 levels, then 21, … up to 1281.
    assert levels == [11, 11, 21, 1281]
    # s1/s0 = 100 is no power of two: K' = ⌊8000 / (log2 100 + 1)⌋ = 1046, no floor on the log.
    assert [int(ict.discretization(k, total, 10, 1000)) for k in (1045, 1046)] == [11, 21]


def test_ict_level_distribution_is_the_discretised_lognormal():
    param = parameterizations.parameterization(_diffusion_config("edm", p_mean=-1.1, p_std=2.0))
    sigmas = ict.karras_levels(param, 11, 1281)
    probabilities = jax.nn.softmax(ict.level_logits(param, sigmas, 11))
    assert np.all(np.asarray(probabilities[10:]) == 0)
    edges = np.asarray(sigmas[:11], np.float64)
    from scipy.stats import norm

    mass = np.diff(norm.cdf(np.log(edges), -1.1, 2.0))
    np.testing.assert_allclose(probabilities[:10], mass / mass.sum(), rtol=1e-4)


def test_meanflow_time_pairs_are_ordered_with_the_given_share_apart():
    param = parameterizations.parameterization(_diffusion_config("flow", p_mean=-0.4, p_std=1.0))
    r, t = meanflow.time_pairs(param, jax.random.key(0), 20_000, 0.25)
    assert np.all(r <= t)
    assert np.mean(r < t) == pytest.approx(0.25, abs=0.01)


class _ExactAverageVelocity(nn.Module):
    """u(z, r, t) = (z − x*)/t: the exact average velocity when all data is the point x*."""

    point: tuple = (0.5, -1.0)
    offset: float = 0.0
    time_scale: float = 1.0

    @nn.compact
    def __call__(self, x, c_noise, label=None, *, train=False, interval=None):
        self.param("unused", nn.initializers.zeros, ())
        t = c_noise[:, None] / self.time_scale
        return (x - jnp.asarray(self.point)) / t + self.offset


def _meanflow_config():
    config = config_lib.load("meanflow2025:smoke")
    config.student.interval_conditioning = True
    config.meanflow.adaptive_p = 0.0  # plain squared error, to read the loss directly
    return config


def test_meanflow_loss_vanishes_for_the_true_average_velocity():
    """With all data at x*, the flow's paths are straight: u = (z − x*)/t for every r, so
    du/dt along (v, 0, 1) is 0, the target is v, and the loss is exactly 0; a wrong u is not."""
    batch = {"x": jnp.tile(jnp.asarray([[0.5, -1.0]]), (64, 1))}
    config = _meanflow_config()
    for offset, expect_zero in ((0.0, True), (0.3, False)):
        module = _ExactAverageVelocity(offset=offset, time_scale=config.diffusion.time_scale)
        params = module.init(jax.random.key(0), batch["x"], jnp.ones(64))
        loss, _ = meanflow.make_loss(_context(config, module))(
            params, None, batch, jax.random.key(1), 0)
        assert (float(loss) < 1e-8) == expect_zero, float(loss)


def _perturbed(params, seed, scale=0.3):
    """Params moved off their initialisation, whose zero heads and gates would make every
    output (and every derivative) exactly zero."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])


def test_scm_tangent_is_the_time_derivative_along_the_trajectory():
    """cos t·sin t·dF/dt from the scaled JVP equals a central finite difference of F along
    x_t + h·dx_t/dt, t + h (float64 params), with F fed as the parameterization feeds it."""
    config = config_lib.load("scm2024:smoke")
    param = parameterizations.parameterization(config.diffusion)
    module = build_module(config)
    x = _random((5, 2), 0)
    t = jnp.linspace(0.2, 1.4, 5)
    dxdt = _random((5, 2), 2)
    with jax.enable_x64(True):
        params = _perturbed(jax.tree.map(lambda p: p.astype(jnp.float64), module.init(
            jax.random.key(1), x, jnp.ones(5))), 3)
        x, t, dxdt = (a.astype(jnp.float64) for a in (x, t, dxdt))
        _, scaled = scm.target_and_tangent(module, params, param, x, t, dxdt, None)
        net = sampling.network(module, params, train=True)

        def frozen(x, t):
            return param.raw(net, x, t).astype(jnp.float64)

        # The network's output is cast to float32, so a step much below 1e-3 differences noise.
        h = 1e-3
        numeric = (frozen(x + h * dxdt, t + h) - frozen(x - h * dxdt, t - h)) / (2 * h)
    expected = (jnp.cos(t) * jnp.sin(t))[:, None] * numeric
    assert float(jnp.max(jnp.abs(scaled))) > 1e-2  # a live derivative, not 0 = 0
    np.testing.assert_allclose(scaled, expected, rtol=1e-3, atol=1e-4)


class _PolynomialVelocity(nn.Module):
    """u(z, r, t) = z·t² + r·t, read back from the inputs the parameterization feeds."""

    time_scale: float = 1.0

    @nn.compact
    def __call__(self, x, c_noise, label=None, *, train=False, interval=None):
        t = c_noise[:, None] / self.time_scale
        r = t - interval[:, None] / self.time_scale
        return x * t ** 2 + r * t


@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_meanflow_derivative_moves_both_times_with_t(time_scale):
    """du/dt along (v, 0, 1) of u = z·t² + r·t is v·t² + 2·z·t + r: the JVP must carry t
    through both of the network's time inputs, at any time_scale."""
    param = parameterizations.parameterization(_diffusion_config("flow", time_scale=time_scale))
    module = _PolynomialVelocity(time_scale)
    net = sampling.network(module, {})
    z, v = _random((4, 2), 0), _random((4, 2), 1)
    r, t = jnp.array([0.1, 0.2, 0.0, 0.5]), jnp.array([0.3, 0.9, 0.7, 0.5])
    u, dudt = meanflow.velocity_derivative(param, net, z, r, t, v)
    np.testing.assert_allclose(u, z * t[:, None] ** 2 + (r * t)[:, None], rtol=1e-5)
    np.testing.assert_allclose(dudt, v * t[:, None] ** 2 + 2 * z * t[:, None] + r[:, None],
                               rtol=1e-4, atol=1e-5)


def test_a_nonfinite_target_row_costs_neither_loss_nor_gradient():
    """A NaN in one row's stop-gradient target leaves the loss and the gradient those of the
    other rows (masking the loss alone would still put 0·NaN = NaN in the gradient)."""
    x = _random((4, 3), 0)
    target = _random((4, 3), 1).at[2, 1].set(jnp.nan)

    def loss(w, rows):
        online = x[rows] * w
        guarded, ok = generative.guard_target(target[rows], online)
        return generative.finite_mean(jnp.sum((online - guarded) ** 2, -1), ok)[0]

    value, grad = jax.value_and_grad(loss)(1.5, jnp.arange(4))
    clean_value, clean_grad = jax.value_and_grad(loss)(1.5, jnp.array([0, 1, 3]))
    assert np.isfinite(grad)
    np.testing.assert_allclose([value, grad], [clean_value, clean_grad], rtol=1e-6)


def test_a_teacher_with_other_diffusion_settings_is_refused(smoke_config, teachers):
    config = smoke_config("scm2024")
    config.teacher.checkpoint = teachers["trigflow"]
    config.diffusion.time_scale = 1000.0
    with pytest.raises(DistillError, match="diffusion.time_scale=1.0"):
        build(config)


def build_module(config):
    from jaxdistill import models

    return models.build(config.student)


@pytest.mark.parametrize("name, updates, match", [
    ("meanflow2025", {"student.interval_conditioning": False}, "interval_conditioning"),
    ("scm2024", {"student.adaptive_weight": False}, "adaptive_weight"),
    ("cd2023", {"diffusion.parameterization": "trigflow"}, "EDM parameterization"),
    ("dmd2_2024", {"diffusion.parameterization": "flow"}, "EDM parameterization"),
    ("scm2024", {"diffusion.parameterization": "edm"}, "TrigFlow"),
    ("diffusion_2d", {"diffusion.parameterization": "vp"}, "unknown config.diffusion"),
    ("dmd2_2024", {"student.gan_head": False}, "gan_head"),
])
def test_methods_refuse_settings_they_cannot_use(name, updates, match):
    config = config_lib.load(f"{name}:smoke")
    config.update_from_flattened_dict(updates)
    with pytest.raises(DistillError, match=match):
        methods.get(config.method).make_loss(_context(config, build_module(config)))


@pytest.mark.parametrize("updates, match", [
    ({"generation.sampler": "ddim"}, "unknown sampler"),
    ({"generation.sampler": "consistency", "generation.steps": 3, "generation.times": (1.0,)},
     "needs 2 intermediate"),
    ({"generation.sampler": "meanflow"}, "parameterization=flow"),
    ({"generation.sampler": "consistency", "diffusion.parameterization": "flow"},
     "consistency parameterization"),
])
def test_bad_sampling_settings_fail_before_compiling(updates, match, smoke_config):
    config = smoke_config("diffusion_2d")
    config.update_from_flattened_dict(updates)
    with pytest.raises(DistillError, match=match):
        build(config)


def _smoke_teacher(tmp_path_factory, data_dir, arg):
    config = config_lib.load(f"diffusion_2d:{arg}")
    config.data.data_dir = data_dir
    config.checkpoint.async_save = False
    workdir = str(tmp_path_factory.mktemp("diffusion_teacher"))
    train.train_and_evaluate(config, workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data_dir):
    """Smoke EDM and TrigFlow teachers, trained once for the module."""
    return {param: _smoke_teacher(tmp_path_factory, data_dir, f"smoke,{param}")
            for param in ("edm", "trigflow")}


CLI_ROWS = [
    ("diffusion_2d", None, ["--config.diffusion.parameterization=flow"]),
    ("cd2023", "edm", []),
    ("ict2023", None, ["--config.generation.steps=2"]),
    ("scm2024", "trigflow", ["--config.generation.steps=2"]),
    ("scm2024", None, ["--config.method=sct", "--config.student_init.from_teacher=False"]),
    ("meanflow2025", None, ["--config.generation.steps=2"]),
    ("dmd2_2024", "edm", ["--config.dmd2.generator_times=(2.5,)", "--config.generation.steps=2",
                          "--config.generation.times=(2.5,)"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("config_name, teacher, flags", CLI_ROWS)
def test_every_step_distillation_method_trains_from_the_cli(config_name, teacher, flags, tmp_path,
                                                            data_dir, teachers):
    workdir = tmp_path / "run"
    teacher_flags = [f"--config.teacher.checkpoint={teachers[teacher]}"] if teacher else []
    cli.main(["train", "--config", f"{config_name}:smoke", "--workdir", str(workdir),
              f"--config.data.data_dir={data_dir}", "--config.checkpoint.async_save=False",
              "--config.total_steps=10", *teacher_flags, *flags])
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert all(np.isfinite(line["loss"]) for line in lines if "split" not in line)
    final_eval = [line for line in lines if line.get("split") == "validation"][-1]
    assert np.isfinite(final_eval["swd"]) and final_eval["nonfinite_samples"] == 0


def test_cd_target_follows_the_student_by_its_ema(smoke_config, teachers):
    config = smoke_config("cd2023")
    config.teacher.checkpoint = teachers["edm"]
    run = build(config)
    state = run.init()
    before = jax.tree.map(np.asarray, state.params)
    np.testing.assert_array_equal(jax.tree.leaves(state.method_state)[0],
                                  jax.tree.leaves(before)[0])
    batch = run.shard_batch(next(iter_batches(config)))
    state, _ = run.train_step(state, batch)
    mu = config.consistency.target_ema
    for target, old, new in zip(jax.tree.leaves(state.method_state), jax.tree.leaves(before),
                                jax.tree.leaves(state.params)):
        np.testing.assert_allclose(target, mu * old + (1 - mu) * np.asarray(new), rtol=1e-5,
                                   atol=1e-7)


def test_student_starts_as_the_teacher_and_keeps_its_own_heads(smoke_config, teachers):
    """sCD's student copies every teacher weight; its adaptive-weighting head, which the
    teacher lacks, keeps its initialisation."""
    from flax import traverse_util

    from jaxdistill import loading

    config = smoke_config("scm2024")
    config.teacher.checkpoint = teachers["trigflow"]
    state = build(config).init()
    student = traverse_util.flatten_dict(jax.device_get(state.params))
    teacher = traverse_util.flatten_dict(jax.device_get(loading.run(
        teachers["trigflow"]).params))
    assert set(teacher) < set(student)
    for path, weight in teacher.items():
        np.testing.assert_array_equal(student[path], weight)
    assert any("weighting" in "/".join(path) for path in set(student) - set(teacher))


def test_a_student_unlike_the_teacher_is_refused_before_compiling(smoke_config, teachers):
    config = smoke_config("cd2023")
    config.teacher.checkpoint = teachers["edm"]
    config.student.width = 64
    with pytest.raises(DistillError, match="from_teacher"):
        build(config)


def iter_batches(config):
    from jaxdistill import data

    return data.train_iterator(config.data, config.batch_size, config.seed)


@pytest.mark.parametrize("arg, dataset, shape", [
    ("paper", "cifar10", (32, 32, 3)),
    ("paper,imagenet64", "imagenet_resized/64x64", (64, 64, 3)),
])
def test_paper_configs_run_on_tfds_images(arg, dataset, shape, tmp_path, monkeypatch):
    """`scm2024:paper[,imagenet64]` reads CIFAR-10 / ImageNet 64×64 through the same TFDS +
    grain pipeline (mock_data stands in for the download) into a class-conditional DiT."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.data_sources import base as data_sources

    from jaxdistill import data

    # As in test_data: mock_data's batched reads only work record by record.
    monkeypatch.setattr(data_sources.BaseDataSource, "__getitems__",
                        lambda self, keys: [self[key] for key in keys])
    config = config_lib.load(f"scm2024:{arg}")
    assert config.data.name == dataset and config.student.model == "dit"
    assert config.teacher.config.startswith("diffusion_images:paper,trigflow")
    with tfds.testing.mock_data(num_examples=8):
        spec = data.spec(config.data)
        batch = next(data.train_iterator(config.data, 4, 0))
    assert spec.task == "generation" and spec.inputs["x"][0] == shape
    assert batch["x"].shape == (4, *shape) and -1 <= batch["x"].min() <= batch["x"].max() <= 1
    assert spec.num_classes == config.student.num_classes


def test_digits_runs_log_the_fd_their_tables_report(smoke_config, teacher_dir, tmp_path):
    config = smoke_config("diffusion_images", total_steps=10)
    config.generation.fd_classifier = teacher_dir  # the digits classifier the tables use
    summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    logged = summary["eval"]["validation"]
    samples_fd = logged["fd"]
    assert np.isfinite(samples_fd) and samples_fd > 0 and "swd" in logged
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["fd"] for row in rows if "split" in row][-1] == samples_fd


def test_an_fd_classifier_of_other_images_is_refused(smoke_config, teacher_dir, tmp_path):
    config = smoke_config("diffusion_2d", total_steps=2)
    config.generation.fd_classifier = teacher_dir
    with pytest.raises(DistillError, match=r"reads images of shape \(8, 8, 1\) but this run"
                                           r" generates \(2,\)"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
