"""DistillSpec: a speculative-decoding draft distilled from its target on CPython's docs.

  jaxdistill train --config configs/distillspec_docs.py:local --workdir runs/draft \\
      --config.teacher.checkpoint=runs/lm_teacher

The target is the `lm_teacher_docs` model (trained first into WORKDIR/teacher when
config.teacher.checkpoint is empty); the draft is `gkd_docs`'s 2-layer student, trained
on-policy (λ = 1) with the total variation distance, the divergence whose per-token complement
is speculative sampling's acceptance probability. `config.speculative` sets how
`jaxdistill reproduce distillspec2024` measures a draft: γ draft tokens per target call,
the sampling temperature, and how many test prompts it decodes.
"""

import ml_collections

from jaxdistill import config as config_lib
from jaxdistill import methods

from . import gkd_docs


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = gkd_docs.get_config(scale)
    config.method = "distillspec"
    methods.with_settings(config)
    config.loss.update({"divergence": "tvd", "student_data_fraction": 1.0})
    config.speculative = ml_collections.ConfigDict(
        {"gamma": 4, "temperature": 1.0, "max_new_tokens": 32, "num_prompts": 512,
         "batch_size": 128})
    if scale == "smoke":
        config.speculative.update({"max_new_tokens": 8, "num_prompts": 32, "batch_size": 32})
    return config
