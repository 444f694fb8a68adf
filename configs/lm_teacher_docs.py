"""The teacher language model for LM distillation: a 4-layer Llama trained on CPython's docs.

  jaxdistill train --config configs/lm_teacher_docs.py:local --workdir runs/lm_teacher

Next-token cross-entropy (`sft`) on the bundled documentation corpus (`bundled_docs`: the
`pydoc_data` topics and the stdlib's docstrings, split by document), tokenized with a byte-level
BPE of 2,048 tokens trained on the train split, packed into rows of 128 tokens. Runtime: smoke
seconds; local about 8 minutes on 2 CPU cores.

`paper`: a real teacher is a pretrained checkpoint (config.teacher.pretrained in the student's
config names a Hugging Face Llama directory), so this config's paper variant only scales the
same recipe to a 12-layer, 768-wide model on TFDS `lm1b` for completeness.
"""

import ml_collections

from jaxdistill import config as config_lib
from jaxdistill import methods

DOCS_DATA = {"name": "bundled_docs", "tokenizer": "bpe:2048", "format": "packed",
             "max_length": 128, "prompt_length": 32, "continuation_length": 32}


def llama(num_layers: int, width: int, heads: int, kv_heads: int, mlp_dim: int,
          vocab_size: int = 2048) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "model": "llama", "vocab_size": vocab_size, "num_layers": num_layers, "width": width,
        "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": None, "mlp_dim": mlp_dim,
        "max_length": 256, "rope_theta": 10000.0, "norm_eps": 1e-6, "tie_embeddings": True,
        "dropout": 0.0, "dtype": "float32", "attention": "xla", "remat": "none"})


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = methods.base_config("sft")
    config.data.update(DOCS_DATA)
    config.student = llama(num_layers=4, width=128, heads=4, kv_heads=2, mlp_dim=344)
    config.optimizer.update({"name": "adamw", "lr": 3e-3, "warmup_steps": 100, "b2": 0.98,
                             "weight_decay": 0.1, "grad_clip_norm": 1.0})
    config.update({"batch_size": 32, "total_steps": 1000, "log_every": 50, "eval_every": 500,
                   "eval_batch_size": 64, "eval_splits": ("validation",)})
    config.checkpoint.every_steps = 500
    if scale == "smoke":
        config.data.update({"tokenizer": "bpe:512", "max_length": 64, "prompt_length": 16,
                            "continuation_length": 16})
        config.student = llama(num_layers=2, width=32, heads=2, kv_heads=1, mlp_dim=64,
                               vocab_size=512)
        config.update({"batch_size": 8, "total_steps": 6, "log_every": 2, "eval_every": 6,
                       "eval_batch_size": 512})
        config.optimizer.warmup_steps = 2
        config.checkpoint.every_steps = 3
    if scale == "paper":
        config.data.update({"name": "lm1b", "tokenizer": "bpe:32000", "max_length": 512,
                            "cache": False})
        config.student = llama(num_layers=12, width=768, heads=12, kv_heads=4, mlp_dim=2048,
                               vocab_size=32000)
        config.student.attention = "flash"
        config.update({"batch_size": 256, "total_steps": 100_000, "log_every": 100,
                       "eval_every": 5000, "eval_batch_size": 256})
        config.optimizer.update({"lr": 1e-3, "warmup_steps": 2000})
        config.checkpoint.every_steps = 5000
    return config
