"""Continuous-time consistency (Lu & Song, 2024): `scd` distils a TrigFlow teacher (sCD);
`--config.method=sct` trains the same student from data alone (sCT).

  jaxdistill train --config configs/scm2024.py:local --workdir runs/scd_2d
  jaxdistill train --config configs/scm2024.py:local --workdir runs/sct_2d --config.method=sct \\
      --config.student_init.from_teacher=False

ARG is `SCALE[,DATA]`: DATA `2d` (default, the checkerboard) or `digits` (a DiT on UCI digits);
`paper` is CIFAR-10 (`paper,imagenet64`: ImageNet 64×64).

The paper's settings: TrigFlow with σ_d the data's scale, times tan t = e^τ/σ_d with
τ ~ N(−1.0, 1.4²), tangent normalisation c = 0.1, tangent warm-up (10k of 400k steps in the
paper, 1,000 of this run's), learned adaptive weighting, positional time embeddings in float32,
Adam with β2 = 0.99, the student initialised from the teacher (sCD). Two-step sampling goes
through t = 1.1, the paper's choice. The TrigFlow teacher (`diffusion_2d` or `diffusion_images`,
`trigflow`) is
trained first into WORKDIR/teacher when teacher.checkpoint is empty.
"""

from . import common


def get_config(arg=None):
    config = common.step_config(arg, "scd", "trigflow", {"2d": 6000, "digits": 2000},
                                teacher=True)
    config.student.adaptive_weight = True
    smoke = common.generative_arg(arg)[0] == "smoke"
    config.consistency.update({"tangent_warmup_steps": 5 if smoke else 1000,
                               "tangent_c": 0.1})
    config.optimizer.update({"lr": 2e-4, "b2": 0.99, "warmup_steps": 0,
                             "schedule": "constant"})
    config.generation.update({"sampler": "consistency", "steps": 1, "times": (1.1,)})
    return config
