"""Mean Flows (Geng et al., 2025): `meanflow`, one-step generation trained from data.

  jaxdistill train --config configs/meanflow2025.py:local --workdir runs/meanflow_2d

ARG is `SCALE[,DATA]`: DATA `2d` (default, the checkerboard) or `digits` (a DiT on UCI digits);
`paper` is CIFAR-10 (`paper,imagenet64`: ImageNet 64×64).

The paper's settings: the linear flow with t = 1 pure noise, logit-normal (−0.4, 1.0) times,
25% of pairs with r ≠ t, the network conditioned on (t, t − r), adaptive weighting p = 1,
c = 1e-3, Adam; evaluation with the EMA of the weights and 1-step sampling
(`--config.generation.steps=2` for two).
"""

from . import common


def get_config(arg=None):
    config = common.step_config(arg, "meanflow", "flow", {"2d": 8000, "digits": 4000})
    config.student.interval_conditioning = True
    config.meanflow.update({"ratio": 0.25, "adaptive_p": 1.0, "adaptive_c": 1e-3})
    config.optimizer.update({"lr": 1e-3, "warmup_steps": 200})
    config.generation.update({"sampler": "meanflow", "steps": 1})
    return config
