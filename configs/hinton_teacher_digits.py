"""The digits teacher of Hinton et al. (2015): a 2×1200 ReLU MLP with dropout.

  jaxdistill train --config configs/hinton_teacher_digits.py:local --workdir runs/teacher

Variants: `smoke` (seconds, proves the path), `local` (UCI digits, about a minute on 2 CPU
cores), `paper` (MNIST from TFDS as in the paper: 2×1200 units, dropout 0.5 on hidden and 0.2 on
input units, the paper trains 3,000 epochs; ours is 60 epochs of 469 steps).
"""

from jaxdistill import config as config_lib


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = config_lib.base()
    config.method = "supervised"
    config.student.update(
        {"model": "mlp", "hidden": (1200, 1200), "dropout": 0.5, "input_dropout": 0.2})
    config.optimizer.update({"name": "adamw", "lr": 1e-3, "warmup_steps": 100})
    config.total_steps = {"smoke": 20, "local": 2000, "paper": 28_140}[scale]
    if scale == "smoke":
        config.student.hidden = (64, 64)
        config.update({"log_every": 5, "eval_every": 10})
        config.optimizer.warmup_steps = 5
        config.checkpoint.every_steps = 10
    if scale == "paper":
        config.data.update({"name": "mnist", "cache": False})
        config.eval_splits = ("test",)  # MNIST has no validation split
        config.update({"log_every": 200, "eval_every": 2000})
        config.checkpoint.every_steps = 5000
    return config
