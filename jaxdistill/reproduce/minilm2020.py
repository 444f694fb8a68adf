"""MiniLM (Wang et al., 2020) on sentence embeddings: all-MiniLM-L6-v2 → 2- and 3-layer students.

Rows, for each student depth: the layer-dropped student before any training, then students
trained by `embedding_kd`, `minilm` and `minilm` plus the embedding loss. Each is scored on the
held-out test sentences (documents never seen in training) by how its pairwise cosine
similarities rank like the teacher's (Spearman, the table's metric) and how often it picks the
teacher's nearest neighbour; encode throughput is measured for every architecture in the same
process, with the teacher's as the baseline.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from jaxdistill import data, evaluate, models, train
from jaxdistill.reproduce.table import ConfigLoader, Experiment, Row
from jaxdistill.run import build

# Student depth -> teacher layers its encoder is copied from (DistilBERT-style: first and last
# layers kept, the rest spread out).
STUDENT_LAYERS = {3: (0, 2, 5), 2: (0, 5)}
TRAINED_ROWS = {
    "embedding_kd": {"method": "embedding_kd"},
    "minilm_kd": {"method": "minilm"},
    "minilm_plus_embedding": {"method": "minilm", "embedding_weight": 1.0},
}


def _config(load: ConfigLoader, scale: str, seed: int, layers: tuple[int, ...], method: str,
            embedding_weight: float = 0.0):
    config = load(f"minilm_sentences:{scale}")
    config.update({"seed": seed, "method": method, "eval_splits": ("test",)})
    config.student.num_layers = len(layers)
    config.student_init.teacher_layers = layers
    config.loss.embedding_weight = embedding_weight
    return config


def _evaluate(config, workdir: str) -> dict[str, float]:
    return train.train_and_evaluate(config, workdir, progress=False)["eval"]["test"]


def _evaluate_initial(config) -> dict[str, float]:
    """The test metrics of the student as `config` initialises it, before any training."""
    run = build(config)
    return evaluate.evaluate_split(run, run.init(), "test")


def encode_throughput(config, model_config, repeats: int = 5) -> float:
    """Sentences/s of the jitted embedding of one eval batch (median of `repeats`).

    Speed depends on the architecture only, so freshly initialised weights of the same shapes
    stand in for trained ones."""
    module = models.build(ml_collections.ConfigDict(model_config))
    inputs = next(data.eval_batches(config.data, "test", config.eval_batch_size))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    params = jax.jit(lambda: module.init(jax.random.key(0), ids[:1], mask[:1], train=False))()
    embed = jax.jit(lambda p, i, m: module.apply(p, i, m, method="embed"))
    embed(params, ids, mask).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        embed(params, ids, mask).block_until_ready()
        times.append(time.perf_counter() - start)
    return len(ids) / float(np.median(times))


def _throughputs(load: ConfigLoader, scale: str) -> dict[str, float]:
    config = _config(load, scale, 0, STUDENT_LAYERS[3], "minilm")
    teacher = models.pretrained.model_config(config.teacher.pretrained)
    speeds = {"teacher": encode_throughput(config, teacher)}
    for depth in STUDENT_LAYERS:
        speeds[f"{depth}L"] = encode_throughput(config, {**teacher, "num_layers": depth})
    return speeds


def _rows(scale: str, workdir: str, seeds: int, load: ConfigLoader) -> list[Row]:
    results: dict[str, list[dict]] = {}
    for seed in range(seeds):
        seed_dir = os.path.join(workdir, f"seed{seed}")
        # The teacher scored against itself: a student that copies all six layers.
        teacher = _config(load, scale, seed, tuple(range(6)), "minilm")
        results.setdefault("teacher", []).append(_evaluate_initial(teacher))
        for depth, layers in STUDENT_LAYERS.items():
            untrained = _config(load, scale, seed, layers, "minilm")
            name = f"student_{depth}L_layerdrop"
            results.setdefault(name, []).append(_evaluate_initial(untrained))
            for row, settings in TRAINED_ROWS.items():
                name = f"student_{depth}L_{row}"
                config = _config(load, scale, seed, layers, **settings)
                results.setdefault(name, []).append(_evaluate(config, os.path.join(seed_dir, name)))
    speeds = _throughputs(load, scale)
    return [_row(name, evals, speeds) for name, evals in results.items()]


def _row(name: str, evals: list[dict], speeds: dict[str, float]) -> Row:
    arch = "teacher" if name == "teacher" else name.split("_")[1]
    extra = {"nn_agreement": [e["nn_agreement"] for e in evals],
             "sentences/s": [speeds[arch]] * len(evals),
             "speed-up": [speeds[arch] / speeds["teacher"]] * len(evals)}
    note = {"teacher": "6×384, the reference itself"}.get(name, "")
    if name.endswith("layerdrop"):
        note = f"layers {STUDENT_LAYERS[int(arch[0])]} of the teacher, no training"
    return Row(name, [e["spearman"] for e in evals], None, note, extra)


def _notes(scale: str, rows: list[Row]) -> str:
    by_name = {row.setting: np.mean(row.values) for row in rows}
    lines = []
    for depth in STUDENT_LAYERS:
        start = by_name[f"student_{depth}L_layerdrop"]
        best = max((name for name in by_name if name.startswith(f"student_{depth}L_")
                    and not name.endswith("layerdrop")), key=by_name.get)
        lines.append(f"{depth}-layer student: Spearman {start:.4f} after layer dropping, best"
                     f" trained row {best} at {by_name[best]:.4f}.")
    lines.append("Throughput is measured on this machine's CPU for one eval batch of test"
                 " sentences; sentences/s is the same for every seed (it depends on the"
                 " architecture only).")
    if scale != "paper":
        lines.append("The paper distils BERT-base on Wikipedia and BookCorpus and reports GLUE and"
                     " SQuAD accuracy; this local run distils all-MiniLM-L6-v2 on ~5k sentences of"
                     " CPython's documentation and scores agreement with the teacher, so there is"
                     " no paper column.")
    return "\n\n".join(lines)


EXPERIMENT = Experiment(
    name="minilm2020",
    description="MiniLM: all-MiniLM-L6-v2 distilled into 2- and 3-layer students (layer drop,"
                " embedding KD, MiniLM attention/value-relation KD, both)",
    metric="Spearman correlation of student vs teacher cosine similarities (held-out sentences)",
    higher_is_better=True,
    default_seeds=3,
    paper_reference="MiniLM reports task accuracy of 6×768 students of BERT-base (e.g. MNLI-m"
                    " 84.0 vs 84.5, SQuAD 2.0 F1 76.4 vs 76.8); no similarity-agreement numbers",
    rows=_rows,
    notes=_notes,
)
