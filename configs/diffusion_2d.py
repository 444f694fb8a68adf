"""A diffusion / flow teacher on a 2-D toy distribution: the model step distillation starts from.

  jaxdistill train --config configs/diffusion_2d.py:local --workdir runs/edm_2d
  jaxdistill train --config configs/diffusion_2d.py:local,trigflow --workdir runs/trigflow_2d

ARG is `SCALE[,PARAMETERIZATION]` (edm by default; trigflow for sCM, flow for flow matching).
The data is `toy_2d/checkerboard` (`--config.data.name=toy_2d/eight_gaussians` or
`toy_2d/two_moons` for the others), about unit scale, so σ_data = 1. Evaluation samples the
validation split's size with EDM's Heun sampler at 18 steps (35 network evaluations) and
reports the sliced Wasserstein distance to the held-out points. Runtime: local about a minute
on 2 CPU cores.
"""

from jaxdistill import config as config_lib

from . import common


def get_config(arg=None):
    scale, parameterization = config_lib.parse_arg(arg, "edm")
    # 2-D toys have no paper scale: generative_arg says so rather than failing on a lookup.
    config = common.generative_base(*common.generative_arg(f"{scale},2d"), parameterization,
                                    "denoising")
    return config
