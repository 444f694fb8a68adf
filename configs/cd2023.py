"""Consistency distillation (Song et al., 2023) of an EDM teacher: `cd`, 1–2 step sampling.

  jaxdistill train --config configs/cd2023.py:local --workdir runs/cd_2d
  jaxdistill train --config configs/cd2023.py:local,digits --workdir runs/cd_digits \\
      --config.teacher.checkpoint=runs/edm_digits    # reuse a trained diffusion_images teacher

ARG is `SCALE[,DATA]`: DATA `2d` (default, the checkerboard) or `digits` (a DiT on UCI digits);
`paper` is CIFAR-10 (`paper,imagenet64`: ImageNet 64×64).

The paper's CIFAR-10 settings where they carry over: N = 18 Heun-discretised levels, target EMA
μ = 0.95, σ ∈ [0.002, 80], ρ = 7, the student initialised from the teacher, Adam; the metric is
squared L2 (its LPIPS needs an ImageNet network). Evaluation samples in one step (`--config.
generation.steps=2` for two, through σ = `generation.times`). The teacher (`diffusion_2d` or
`diffusion_images`) is
trained first into WORKDIR/teacher when teacher.checkpoint is empty.
"""

from . import common


def get_config(arg=None):
    config = common.step_config(arg, "cd", "edm", {"2d": 6000, "digits": 2000}, teacher=True)
    config.consistency.update({"discretization": 18, "target_ema": 0.95, "metric": "l2"})
    config.optimizer.update({"lr": 2e-4, "warmup_steps": 0, "schedule": "constant"})
    config.generation.update({"sampler": "consistency", "steps": 1})
    return config
