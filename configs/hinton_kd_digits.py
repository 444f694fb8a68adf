"""Hinton KD on digits: distil the 2×1200 teacher into a small MLP at the paper's temperature.

  jaxdistill train --config configs/hinton_kd_digits.py:local --workdir runs/kd
  jaxdistill train --config configs/hinton_kd_digits.py:local --workdir runs/kd \\
      --config.teacher.checkpoint=runs/teacher          # reuse a trained teacher

With `teacher.checkpoint` empty, the teacher (`teacher.config`) is trained first into
WORKDIR/teacher. `--config.method=supervised` trains the same student from scratch (the
paper's baseline). loss = α·τ²·KL(teacher_τ‖student_τ) + (1−α)·CE with τ = 20, as in the paper's
MNIST experiment. Runtime: smoke seconds, local about a minute on 2 CPU cores plus the teacher.
"""

from jaxdistill import config as config_lib

from . import common


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = common.digits_base(scale, "kd")
    config.teacher.config = f"hinton_teacher_digits:{scale}"
    # The paper's student is 2×800 on MNIST's 784 inputs, unregularised; the digits inputs are 64
    # wide and the training set 1,257 images, so the student shrinks to match.
    config.student.update({"model": "mlp", "hidden": (32, 32), "dropout": 0.0})
    config.loss.update({"temperature": 20.0, "alpha": 0.9})
    if scale == "paper":
        config.student.hidden = (800, 800)
    return config
