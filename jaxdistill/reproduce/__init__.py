"""`jaxdistill reproduce NAME`: run every row of a paper's table and write it beside the paper's.

Each experiment module defines an `Experiment` (see `table`) whose
`rows(scale, workdir, seeds, load)` trains what the table needs (loading every config through
`load`, which applies run-wide settings) and returns one `Row` per setting with a value per seed.
`run` aggregates them and writes OUT/NAME_SCALE.md (human table) and OUT/NAME_SCALE.json
(DESIGN.md's schema), with OUT/NAME.md and OUT/NAME.json linked to the newest of them.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

import jax
import ml_collections

from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError
from jaxdistill.reproduce import (
    distillspec2024,
    gkd2024,
    hinton2015,
    minilm2020,
    self_distillation,
    step_tables,
    table,
)
from jaxdistill.reproduce.machine import device_description

EXPERIMENTS: dict[str, table.Experiment] = {e.name: e for e in (
    hinton2015.EXPERIMENT, minilm2020.EXPERIMENT, self_distillation.EXPERIMENT, gkd2024.EXPERIMENT,
    distillspec2024.EXPERIMENT, *step_tables.EXPERIMENTS)}


def run(name: str, *, scale: str, out: str, workdir: str | None = None,
        seeds: int | None = None, data_dir: str = "") -> dict:
    if name not in EXPERIMENTS:
        raise DistillError(f"unknown table {name!r}; available: {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    seeds = seeds or experiment.default_seeds
    workdir = workdir or os.path.join(out, "runs", f"{name}_{scale}")
    started = time.perf_counter()

    def load(spec: str) -> ml_collections.ConfigDict:
        config = config_lib.load(spec)
        config.data.data_dir = data_dir or config.data.data_dir
        return config

    rows = experiment.rows(scale, workdir, seeds, load)
    result = {
        "name": name,
        "scale": scale,
        "metric": experiment.metric,
        "higher_is_better": experiment.higher_is_better,
        "device": device_description(),
        "wall_s": round(time.perf_counter() - started, 1),
        "command": ("jaxdistill " + shlex.join(["reproduce", *sys.argv[2:]])
                    if sys.argv[1:2] == ["reproduce"]
                    else f"jaxdistill reproduce {name} --scale {scale}"),
        "seeds": list(range(seeds)),
        "rows": table.json_rows(rows),
    }
    if jax.process_index() == 0:  # in a multi-process run, one table
        print(table.write(experiment, result, rows, out))
    return result
