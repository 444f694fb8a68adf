"""Settings shared by the Hinton et al. (2015) digits/MNIST configs, per scale."""

import ml_collections


def digits_base(scale: str) -> ml_collections.ConfigDict:
    """Run length, logging, optimizer and dataset of a `smoke` / `local` / `paper` digits run.

    `paper` trains on TFDS `mnist` (60 epochs of 469 batches; the paper trains far longer).
    """
    from jaxdistill import config as config_lib

    config = config_lib.base()
    config.optimizer.update({"name": "adamw", "lr": 1e-3, "warmup_steps": 100})
    config.total_steps = {"smoke": 20, "local": 2000, "paper": 28_140}[scale]
    if scale == "smoke":
        config.update({"log_every": 5, "eval_every": 10})
        config.optimizer.warmup_steps = 5
        config.checkpoint.every_steps = 10
    if scale == "paper":
        config.data.update({"name": "mnist", "cache": False})
        config.eval_splits = ("test",)  # MNIST has no validation split
        config.update({"log_every": 200, "eval_every": 2000})
        config.checkpoint.every_steps = 5000
    return config


# The self-distillation settings (born-again, PS-KD): one architecture for teacher and student,
# wide enough to overfit the 1,257 training digits, unregularised so soft targets can matter.
SELF_DISTILLATION_MLP = {"model": "mlp", "hidden": (256, 256), "dropout": 0.0, "input_dropout": 0.0,
                         "num_classes": 10}
