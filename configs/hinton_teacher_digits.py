"""The digits teacher of Hinton et al. (2015): a 2×1200 ReLU MLP with dropout.

  jaxdistill train --config configs/hinton_teacher_digits.py:local --workdir runs/teacher

Variants: `smoke` (seconds, proves the path), `local` (UCI digits, about a minute on 2 CPU
cores), `paper` (MNIST from TFDS as in the paper: 2×1200 units, dropout 0.5 on hidden and 0.2 on
input units, the paper trains 3,000 epochs; ours is 60 epochs of 469 steps).
"""

from jaxdistill import config as config_lib

from . import common


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = common.digits_base(scale, "supervised")
    config.student.update(
        {"model": "mlp", "hidden": (1200, 1200), "dropout": 0.5, "input_dropout": 0.2})
    if scale == "smoke":
        config.student.hidden = (64, 64)
    return config
