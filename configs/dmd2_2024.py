"""DMD2 (Yin et al., 2024): `dmd2` distils an EDM teacher into a one-step generator.

  jaxdistill train --config configs/dmd2_2024.py:local --workdir runs/dmd2_2d
  jaxdistill train --config configs/dmd2_2024.py:local --workdir runs/dmd2_2step_2d \\
      --config.dmd2.generator_times='(2.5,)' --config.generation.steps=2 \\
      --config.generation.times='(2.5,)'

ARG is `SCALE[,DATA]`: DATA `2d` (default, the checkerboard) or `digits` (a DiT on UCI digits);
`paper` is CIFAR-10 (`paper,imagenet64`: ImageNet 64×64).

The paper's settings where they carry over: generator and fake score initialised from the
teacher, the fake score updated 5 times per generator update (two time-scale rule), Adam with
β1 = 0 and β2 = 0.99 for the fake score, no regression loss, the GAN head on the fake score's
last hidden features (generator weight 3e-3, discriminator 1e-2; the paper's ablation without
it: ImageNet-64 FID 2.61 instead of 1.28). The EDM
teacher (`diffusion_2d` or `diffusion_images`) is trained first into WORKDIR/teacher when
teacher.checkpoint is empty.
"""

from . import common


def get_config(arg=None):
    config = common.step_config(arg, "dmd2", "edm", {"2d": 2000, "digits": 1000}, teacher=True)
    # The GAN head: generator weight 3e-3 and discriminator weight 1e-2, the paper's ImageNet
    # values (`--config.dmd2.gan_weight=0` for the ablation without it).
    config.student.gan_head = True
    config.dmd2.update({"fake_updates": 5, "fake_lr": 2e-4, "guidance": 1.0, "gan_weight": 3e-3,
                        "discriminator_weight": 1e-2})
    config.optimizer.update({"lr": 2e-4, "b1": 0.0, "b2": 0.99, "warmup_steps": 0,
                             "schedule": "constant"})
    config.generation.update({"sampler": "consistency", "steps": 1})
    return config
