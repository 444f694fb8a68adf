"""A class-conditional diffusion / flow DiT on images: the UCI digits (8×8) locally, CIFAR-10
(DiT-B/2) or ImageNet 64×64 (DiT-B/4) at paper scale; the image teacher of step distillation.

  jaxdistill train --config configs/diffusion_images.py:local --workdir runs/edm_digits
  jaxdistill train --config configs/diffusion_images.py:local,trigflow --workdir runs/trig_digits
  jaxdistill train --config configs/diffusion_images.py:paper,trigflow,imagenet64 --workdir ...

ARG is `SCALE[,PARAMETERIZATION[,DATA]]` (edm, trigflow or flow; DATA digits, or cifar10 /
imagenet64 at paper scale). Images are scaled to [-1, 1] (σ_data = 0.5); labels are dropped 10%
of the time so one network also learns the unconditional model that classifier-free guidance
needs (`--config.generation.guidance=w`). The DiT's attention is
`jaxdistill.kernels.flash_attention`.
"""

from jaxdistill import config as config_lib

from . import common


def get_config(arg=None):
    scale, parameterization, kind = config_lib.parse_arg(arg, "edm", "")
    default_kind = "cifar10" if scale == "paper" else "digits"
    scale, kind = common.generative_arg(f"{scale},{kind or default_kind}")
    config = common.generative_base(scale, kind, parameterization, "denoising")
    config.diffusion.label_dropout = 0.1
    return config
