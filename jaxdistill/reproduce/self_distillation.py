"""Self-distillation on digits: Born-Again Networks (2018) and PS-KD (2021), one architecture.

Rows: generation 0 (the MLP trained from labels, both methods' baseline), born-again
generations 1–3 (each distilled from the one before) at the paper's τ = 1 and softened at τ = 4,
and PS-KD (the MLP taught by its own previous epoch).
"""

from __future__ import annotations

import os

import numpy as np

from jaxdistill import train
from jaxdistill.reproduce.table import ConfigLoader, Experiment, Row

GENERATIONS = 3
# The paper's born-again loss is the teacher's distribution at τ = 1; a digits MLP trained to
# convergence puts almost all of its mass on the label there, so a softened chain (τ = 4) shows
# what the dark knowledge adds when the targets carry some.
CHAINS = {"born_again": 1.0, "born_again_t4": 4.0}


def _evaluate(config, workdir: str) -> dict:
    """Test accuracy, and the model's mean NLL on its own training split (how peaked it is)."""
    config.eval_splits = ("train", "test")
    summary = train.train_and_evaluate(config, workdir, progress=False)["eval"]
    return {"accuracy": summary["test"]["accuracy"], "train_nll": summary["train"]["loss"]}


def _chain(load: ConfigLoader, scale: str, seed: int, seed_dir: str, name: str,
           temperature: float, results: dict) -> None:
    """Generations 1..GENERATIONS, each distilled from the one before, from generation 0."""
    previous = os.path.join(seed_dir, "born_again_gen0")
    for generation in range(1, GENERATIONS + 1):
        config = load(f"born_again_digits:{scale},{generation}")
        config.seed = 100 * seed + generation  # every generation is a fresh network
        config.teacher.checkpoint = previous
        config.loss.temperature = temperature
        previous = os.path.join(seed_dir, f"{name}_gen{generation}")
        results.setdefault(f"{name}_gen{generation}", []).append(_evaluate(config, previous))


def _rows(scale: str, workdir: str, seeds: int, load: ConfigLoader) -> list[Row]:
    results: dict[str, list[dict]] = {}
    for seed in range(seeds):
        seed_dir = os.path.join(workdir, f"seed{seed}")
        config = load(f"born_again_digits:{scale},0")
        config.seed = 100 * seed
        results.setdefault("born_again_gen0", []).append(
            _evaluate(config, os.path.join(seed_dir, "born_again_gen0")))
        for name, temperature in CHAINS.items():
            _chain(load, scale, seed, seed_dir, name, temperature, results)
        config = load(f"pskd_digits:{scale}")
        config.seed = 100 * seed
        results.setdefault("pskd", []).append(_evaluate(config, os.path.join(seed_dir, "pskd")))
    notes = {"born_again_gen0": "trained from labels: the baseline of every row",
             "born_again_gen1": "τ = 1, α = 1 (the paper's loss)",
             "born_again_t4_gen1": "τ = 4, α = 1",
             "pskd": "α_T = 0.8"}
    return [Row(name, [e["accuracy"] for e in evals], None, notes.get(name, ""),
                {"train_nll": [e["train_nll"] for e in evals]})
            for name, evals in results.items()]


def _notes(scale: str, rows: list[Row]) -> str:
    by_name = {row.setting: np.asarray(row.values) for row in rows}
    baseline = by_name["born_again_gen0"]
    lines = []
    for name, values in by_name.items():
        if name != "born_again_gen0":
            gap = values - baseline
            per_seed = ", ".join(f"{g:+.4f}" for g in gap)
            lines.append(f"{name} minus generation 0, per seed: {per_seed}"
                         f" (mean {gap.mean():+.4f}; ahead on {int(np.sum(gap > 0))} of {len(gap)}"
                         " seeds).")
    lines.append("Generation k of seed s is initialised with seed 100·s + k (a fresh network);"
                 " generation 0 and PS-KD with 100·s. train_nll is each model's mean NLL on its"
                 " training split: the lower it is, the closer its τ = 1 outputs are to the labels"
                 " and the less a student of it can learn beyond them.")
    lines.append("UCI digits has 360 test images: one image is 0.0028 of accuracy.")
    return "\n\n".join(lines)


EXPERIMENT = Experiment(
    name="self_distillation",
    description="Born-again networks (Furlanello et al. 2018, generations 1–3) and PS-KD"
                " (Kim et al. 2021) on digits, 256-256 MLP",
    metric="test accuracy",
    higher_is_better=True,
    default_seeds=3,
    paper_reference="BAN: same-architecture students beat their teachers on CIFAR-10/100;"
                    " PS-KD: lower error than training on labels alone on CIFAR-100 and ImageNet."
                    " Neither reports digits, so there is no paper column",
    rows=_rows,
    notes=_notes,
)
