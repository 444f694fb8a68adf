"""Your LLM distillation: a Hugging Face teacher into a Hugging Face student on your own files.

  jaxdistill train --config configs/llm_distill.py:local --workdir runs/mine \\
      --config.teacher.pretrained=/models/teacher --config.data.tokenizer=/models/teacher \\
      --config.student_init.pretrained=/models/student --config.data.files=train.jsonl

`--config.method` takes every LM method: logit_kd (the default: forward KL on the data's
tokens), sft, seqkd, gkd, distillspec, taid, adaspec, and cached_kd after `jaxdistill
cache-teacher` (`--config.data.teacher_cache=DIR`); `--config.loss.fused=True` streams the
vocabulary through the fused loss. The files are read as "Your own data" in the README says
(JSONL / Parquet / text / save_to_disk; text, prompt + completion or chat messages); the run
holds out `data.validation_fraction` of them unless `data.validation_files` are given. On-policy
methods (gkd, distillspec, seqkd) sample the completion or the assistant turn: use
`--config.data.format=prompts` with them. Without student_init.pretrained the student is the
`llama` below from scratch (its vocab_size must be the tokenizer's).

- smoke: a few steps of short rows, for the tests' tiny checkpoints;
- local: CPU-sized rows of 256 tokens, float32;
- paper: rows of 2048 tokens, 64 per optimizer step in 8 micro-batches, bfloat16 compute (the
  teacher stored in bfloat16), flash attention, save_dots remat and the fused loss.
"""

from jaxdistill import config as config_lib
from jaxdistill import methods

from . import lm_teacher_docs


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = methods.base_config("logit_kd")
    config.data.update({"name": "", "files": "", "validation_fraction": 0.02, "format": "packed",
                        "max_length": 256, "prompt_length": 128, "continuation_length": 128})
    config.student = lm_teacher_docs.llama(num_layers=4, width=256, heads=4, kv_heads=2,
                                           mlp_dim=688, vocab_size=32000)
    config.loss.update({"divergence": "fkl", "temperature": 1.0})
    config.optimizer.update({"name": "adamw", "lr": 1e-4, "warmup_steps": 100, "b2": 0.98,
                             "weight_decay": 0.01, "grad_clip_norm": 1.0})
    config.update({"batch_size": 8, "total_steps": 1000, "log_every": 50, "eval_every": 500,
                   "eval_batch_size": 16, "eval_splits": ("validation",)})
    config.checkpoint.every_steps = 500
    if scale == "smoke":
        config.data.update({"max_length": 32, "prompt_length": 16, "continuation_length": 16})
        config.update({"total_steps": 4, "log_every": 2, "eval_every": 4, "eval_batch_size": 8})
        config.optimizer.warmup_steps = 0
        config.checkpoint.every_steps = 2
    if scale == "paper":
        config.data.update({"max_length": 2048, "prompt_length": 1024,
                            "continuation_length": 1024})
        config.student.update({"attention": "flash", "remat": "save_dots"})
        config.teacher.attention = "flash"
        config.loss.fused = True
        config.update({"batch_size": 64, "micro_batches": 8, "precision": "bfloat16",
                       "total_steps": 20_000, "eval_every": 2000, "eval_batch_size": 64})
        config.checkpoint.every_steps = 1000
    return config
