"""On-policy and supervised LM distillation (GKD, DistiLLM's skew KLs, TAID) on CPython's docs.

  jaxdistill train --config configs/gkd_docs.py:local --workdir runs/gkd
  jaxdistill train --config configs/gkd_docs.py:local --workdir runs/fkl \\
      --config.method=logit_kd --config.loss.divergence=fkl \\
      --config.teacher.checkpoint=runs/lm_teacher

A 2-layer student learns from the 4-layer teacher of `lm_teacher_docs` (trained first into
WORKDIR/teacher when config.teacher.checkpoint is empty) on prompt/continuation pairs: 32 prompt
tokens, 32 continuation tokens. The default is GKD with λ = 0.5 (half the batches sampled by
the student) and the generalized JSD at β = 0.5; `--config.method` switches to sft, seqkd,
logit_kd (any config.loss.divergence), taid or adaspec. Evaluation on held-out documents: the
student's NLL of the real continuation, its top-1 agreement with the teacher, and the teacher's
NLL of continuations the student samples. Runtime: smoke seconds; local a few minutes.

`paper`: GKD's summarisation/translation settings distil T5-XL into T5-small; the Llama-family
analogue here takes a pretrained teacher by path (config.teacher.pretrained) and a TFDS corpus.
"""

from jaxdistill import config as config_lib
from jaxdistill import methods

from . import lm_teacher_docs


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = lm_teacher_docs.get_config(scale)
    config.method = "gkd"
    methods.with_settings(config)
    config.teacher.config = f"lm_teacher_docs:{scale}"
    config.data.format = "prompts"
    config.student = lm_teacher_docs.llama(num_layers=2, width=96, heads=4, kv_heads=2,
                                           mlp_dim=256, vocab_size=config.student.vocab_size)
    config.loss.update({"divergence": "jsd", "beta": 0.5, "student_data_fraction": 0.5})
    config.optimizer.update({"lr": 2e-3, "warmup_steps": 50})
    config.update({"batch_size": 16, "total_steps": 300, "eval_every": 300})
    config.checkpoint.every_steps = 300
    if scale == "smoke":
        config.student = lm_teacher_docs.llama(num_layers=1, width=32, heads=2, kv_heads=1,
                                               mlp_dim=64, vocab_size=config.student.vocab_size)
        config.update({"total_steps": 4, "eval_every": 4})
        config.checkpoint.every_steps = 2
    if scale == "paper":
        config.student = lm_teacher_docs.llama(num_layers=4, width=512, heads=8, kv_heads=4,
                                               mlp_dim=1376, vocab_size=32000)
        config.student.attention = config.teacher.attention = "flash"
        config.data.update({"prompt_length": 256, "continuation_length": 128})
        config.update({"total_steps": 50_000, "eval_every": 5000})
        config.checkpoint.every_steps = 5000
    return config
