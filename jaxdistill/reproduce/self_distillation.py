"""Self-distillation on digits: Born-Again Networks (2018) and PS-KD (2021), one architecture.

Rows: generation 0 (the MLP trained from labels, both methods' baseline), born-again
generations 1–3 (each distilled from the one before), and PS-KD (the MLP taught by its own
previous epoch).
"""

from __future__ import annotations

import os

import numpy as np

from jaxdistill import train
from jaxdistill.reproduce import ConfigLoader, Experiment, Row

GENERATIONS = 3


def _test_accuracy(config, workdir: str) -> float:
    return train.train_and_evaluate(config, workdir, progress=False)["eval"]["test"]["accuracy"]


def _rows(scale: str, workdir: str, seeds: int, load: ConfigLoader) -> list[Row]:
    accuracies: dict[str, list[float]] = {}
    for seed in range(seeds):
        seed_dir = os.path.join(workdir, f"seed{seed}")
        previous = None
        for generation in range(GENERATIONS + 1):
            config = load(f"born_again_digits:{scale},{generation}")
            config.seed = seed
            config.teacher.checkpoint = previous or ""
            previous = os.path.join(seed_dir, f"born_again_gen{generation}")
            accuracies.setdefault(f"born_again_gen{generation}", []).append(
                _test_accuracy(config, previous))
        config = load(f"pskd_digits:{scale}")
        config.seed = seed
        accuracies.setdefault("pskd", []).append(_test_accuracy(config, os.path.join(seed_dir, "pskd")))
    notes = {"born_again_gen0": "trained from labels: the baseline of every row",
             "pskd": "α_T = 0.8"}
    return [Row(name, values, None, notes.get(name, "")) for name, values in accuracies.items()]


def _notes(scale: str, rows: list[Row]) -> str:
    by_name = {row.setting: np.asarray(row.values) for row in rows}
    baseline = by_name["born_again_gen0"]
    lines = []
    for name, values in by_name.items():
        if name != "born_again_gen0":
            gap = values - baseline
            lines.append(f"{name} minus generation 0, per seed: {', '.join(f'{g:+.4f}' for g in gap)}"
                         f" (mean {gap.mean():+.4f}; ahead on {int(np.sum(gap > 0))} of {len(gap)}"
                         " seeds).")
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
