"""A class-conditional diffusion / flow DiT on the UCI digits (8×8): the image teacher of step
distillation; `paper` is CIFAR-10 with a DiT-B/2.

  jaxdistill train --config configs/diffusion_digits.py:local --workdir runs/edm_digits
  jaxdistill train --config configs/diffusion_digits.py:local,trigflow --workdir runs/trig_digits

ARG is `SCALE[,PARAMETERIZATION]` (edm, trigflow or flow). Images are scaled to [-1, 1]
(σ_data = 0.5); labels are dropped 10% of the time so one network also learns the
unconditional model that classifier-free guidance needs (`--config.generation.guidance=w`).
The DiT's attention is `jaxdistill.kernels.flash_attention`.
"""

from jaxdistill.configs import common


def get_config(arg=None):
    scale, _, parameterization = (arg or "local").partition(",")
    config = common.generative_base(common.generative_arg(scale)[0], "digits",
                                    parameterization or "edm")
    config.method = "diffusion"
    config.diffusion.label_dropout = 0.1
    config.ema_decay = 0.999
    return config
