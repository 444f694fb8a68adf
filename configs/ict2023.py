"""Improved consistency training (Song & Dhariwal, 2023): `ict`, no teacher, 1–2 step sampling.

  jaxdistill train --config configs/ict2023.py:local --workdir runs/ict_2d

ARG is `SCALE[,DATA]`: DATA `2d` (default, the checkerboard) or `digits` (a DiT on UCI digits);
`paper` is CIFAR-10 (`paper,imagenet64`: ImageNet 64×64).

The paper's settings: pseudo-Huber metric (c = 0.00054·√d), log-normal level sampling
(P_mean = −1.1, P_std = 2.0), discretization curriculum s0 = 10 → s1 = 1280 doubling over the
run, λ(σ_i) = 1/(σ_{i+1} − σ_i), no EMA target, Adam; evaluation with the EMA of
the weights (0.99993 in the paper over 400k steps, 0.999 over this local run). Two-step
sampling re-noises to σ ≈ 2.5 (`sampling.consistency_times`; the paper tunes 0.821 on
CIFAR-10, `--config.generation.times=(0.821,)`).
"""

from . import common


def get_config(arg=None):
    config = common.step_config(arg, "ict", "edm", {"2d": 8000, "digits": 4000})
    config.diffusion.update({"p_mean": -1.1, "p_std": 2.0})
    config.consistency.update({"metric": "pseudo_huber", "curriculum_start": 10,
                               "curriculum_end": 1280})
    config.optimizer.update({"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"})
    config.generation.update({"sampler": "consistency", "steps": 1})
    return config
