"""Settings shared by the Hinton et al. (2015) digits/MNIST configs, per scale."""

import ml_collections

from jaxdistill import config as config_lib
from jaxdistill import methods
from jaxdistill.errors import DistillError


def digits_base(scale: str, method: str) -> ml_collections.ConfigDict:
    """Run length, logging, optimizer and dataset of a `smoke` / `local` / `paper` digits run.

    `paper` trains on TFDS `mnist` (60 epochs of 469 batches; the paper trains far longer).
    """
    config = methods.base_config(method)
    config.optimizer.update({"name": "adamw", "lr": 1e-3, "warmup_steps": 100})
    config.total_steps = {"smoke": 20, "local": 2000, "paper": 28_140}[scale]
    if scale == "smoke":
        config.update({"log_every": 5, "eval_every": 10})
        config.optimizer.warmup_steps = 5
        config.checkpoint.every_steps = 10
    if scale == "paper":
        config.data.update({"name": "mnist", "cache": False})
        config.eval_splits = ("test",)  # MNIST has no validation split
        config.update({"log_every": 200, "eval_every": 2000})
        config.checkpoint.every_steps = 5000
    return config


# The self-distillation settings (born-again, PS-KD): one architecture for teacher and student,
# wide enough to overfit the 1,257 training digits, unregularised so soft targets can matter.
SELF_DISTILLATION_MLP = {"model": "mlp", "hidden": (256, 256), "dropout": 0.0, "input_dropout": 0.0,
                         "num_classes": 10}


# Step distillation (configs diffusion_2d, diffusion_images and the paper configs cd2023, …):
# where the data lives and what denoises it, per data kind and scale.
GENERATIVE_DATA = {
    # 2-D toys: about unit scale; a residual MLP.
    "2d": {"data": "toy_2d/checkerboard", "sigma_data": 1.0, "batch_size": 256,
           "eval_batch_size": 1000,
           "model": {"model": "denoiser_mlp", "width": 128, "depth": 3}},
    # UCI digits (8×8, [-1, 1]): a class-conditional DiT on 2×2 patches (16 tokens).
    "digits": {"data": "sklearn_digits", "sigma_data": 0.5, "batch_size": 64,
               "eval_batch_size": 64,
               "model": {"model": "dit", "width": 64, "depth": 3, "heads": 4, "patch": 2,
                         "num_classes": 10}},
}
# The published settings, on TFDS: CIFAR-10 at 32×32 with a DiT-B/2, and ImageNet at 64×64
# (sCM's) with a DiT-B/4 (the papers' U-Nets differ), both class-conditional.
PAPER_GENERATIVE = {
    "cifar10": {"data": "cifar10", "sigma_data": 0.5, "batch_size": 512, "eval_batch_size": 500,
                "eval_split": "test",
                "model": {"model": "dit", "width": 768, "depth": 12, "heads": 12, "patch": 2,
                          "num_classes": 10}},
    "imagenet64": {"data": "imagenet_resized/64x64", "sigma_data": 0.5, "batch_size": 2048,
                   "eval_batch_size": 500, "eval_split": "validation",
                   "model": {"model": "dit", "width": 768, "depth": 12, "heads": 12, "patch": 4,
                             "num_classes": 1000}},
}
# Each parameterization's training-noise distribution, as its paper sets it; JVP-trained
# TrigFlow and flow models embed the time unscaled (sCM §4.1), EDM's c_noise is scaled up.
# Steps of a local teacher run (each method's config sets its own).
LOCAL_STEPS = {"2d": 6000, "digits": 4000}
NOISE = {"edm": (-1.2, 1.2, 1000.0), "trigflow": (-1.0, 1.4, 1.0), "flow": (-0.4, 1.0, 1.0)}


def generative_arg(arg: str | None) -> tuple[str, str]:
    """`SCALE[,DATA]` -> (scale, data): DATA is 2d (default) or digits at smoke and local
    scale, cifar10 (default) or imagenet64 at paper scale."""
    scale, kind = config_lib.parse_arg(arg, "")
    choices = PAPER_GENERATIVE if scale == "paper" else GENERATIVE_DATA
    kind = kind or next(iter(choices))
    if kind not in choices:
        raise DistillError(f"unknown data {kind!r} in config arg {arg!r}; at {scale} scale choose"
                           f" one of {', '.join(choices)}")
    return scale, kind


def teacher_config(scale: str, kind: str, parameterization: str) -> str:
    """The config that trains the diffusion teacher of a method config at SCALE,DATA."""
    if kind == "2d":
        return f"diffusion_2d:{scale},{parameterization}"
    return f"diffusion_images:{scale},{parameterization},{kind}"


def step_config(arg: str | None, method: str, parameterization: str,
                local_steps: dict[str, int], *, teacher: bool = False) -> ml_collections.ConfigDict:
    """The start every step-distillation paper config shares: `generative_base` at ARG's scale
    and data, `method`, the local run length per data kind, and the diffusion teacher of the
    same parameterization (what the tables compare with; with `teacher` the method distils it,
    trained first when teacher.checkpoint is empty, and the student starts as its copy)."""
    scale, kind = generative_arg(arg)
    config = generative_base(scale, kind, parameterization, method)
    config.teacher.config = teacher_config(scale, kind, parameterization)
    if teacher:
        config.student_init.from_teacher = True
    if scale == "local":
        config.total_steps = local_steps[kind]
    return config


def generative_base(scale: str, kind: str, parameterization: str,
                    method: str) -> ml_collections.ConfigDict:
    """Data, denoiser, noise, run length and evaluation shared by every generative config."""
    config = methods.base_config(method)
    setting = (PAPER_GENERATIVE if scale == "paper" else GENERATIVE_DATA)[kind]
    config.data.update({"name": setting["data"], "task": "generation",
                        "cache": scale != "paper"})
    config.student = ml_collections.ConfigDict(setting["model"])
    p_mean, p_std, time_scale = NOISE[parameterization] if parameterization in NOISE else (
        NOISE["edm"])
    config.diffusion.update({"parameterization": parameterization,
                             "sigma_data": setting["sigma_data"], "p_mean": p_mean,
                             "p_std": p_std, "time_scale": time_scale})
    config.batch_size = setting["batch_size"]
    config.eval_batch_size = setting["eval_batch_size"]
    config.eval_splits = (setting.get("eval_split", "validation"),)
    config.ema_decay = 0.999  # generative runs are evaluated (and distilled from) by their EMA
    config.optimizer.update({"name": "adamw", "lr": 1e-3 if kind == "2d" else 5e-4,
                             "warmup_steps": 200})
    config.total_steps = {"smoke": 20, "local": LOCAL_STEPS.get(kind), "paper": 400_000}[scale]
    config.update({"log_every": 200, "eval_every": 2000})
    config.checkpoint.every_steps = 2000
    if scale == "paper":
        config.update({"log_every": 1000, "eval_every": 50_000})
        config.checkpoint.every_steps = 10_000
        config.optimizer.update({"lr": 1e-4, "warmup_steps": 5000})
    if scale == "smoke":
        config.update({"log_every": 5, "eval_every": 10, "batch_size": 64})
        config.optimizer.warmup_steps = 5
        config.checkpoint.every_steps = 10
        config.generation.steps = 4
        if kind == "digits":
            config.student.update({"width": 32, "depth": 1})
            config.batch_size = 32
    return config
