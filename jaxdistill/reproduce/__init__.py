"""`jaxdistill reproduce NAME`: run every row of a paper's table and write it beside the paper's.

Each experiment module defines an `Experiment` whose `rows(scale, workdir, seeds, load)` trains
what the table needs (loading every config through `load`, which applies run-wide settings) and
returns one `Row` per setting with a value per seed. This module aggregates them and writes
OUT/NAME_SCALE.md (human table) and OUT/NAME_SCALE.json (DESIGN.md's schema), with OUT/NAME.md
and OUT/NAME.json linked to the newest of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError


ConfigLoader = Callable[[str], ml_collections.ConfigDict]


@dataclasses.dataclass
class Row:
    setting: str
    values: list[float]          # one per seed
    paper: float | None = None   # the published number where the paper has this row and scale
    note: str = ""
    # Secondary metrics, each with one value per seed, shown as extra columns.
    extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    image: str | None = None     # a PNG of the row's samples, copied beside the table


def _stats(values: list[float]) -> dict:
    return {"value": float(np.mean(values)), "std": float(np.std(values)),
            "seeds": [float(v) for v in values]}


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    metric: str
    higher_is_better: bool
    default_seeds: int
    paper_reference: str         # what the paper reports, in words, for the table's header
    rows: Callable[[str, str, int, ConfigLoader], list[Row]]
    notes: Callable[[str, list[Row]], str] = lambda scale, rows: ""


def _experiments() -> dict[str, Experiment]:
    from jaxdistill.reproduce import (distillspec2024, gkd2024, hinton2015, minilm2020,
                                      self_distillation, step_tables)

    return {e.name: e for e in (hinton2015.EXPERIMENT, minilm2020.EXPERIMENT,
                                self_distillation.EXPERIMENT, gkd2024.EXPERIMENT,
                                distillspec2024.EXPERIMENT, *step_tables.EXPERIMENTS)}


EXPERIMENTS = _experiments()


def device_description() -> str:
    devices = jax.devices()
    kind = devices[0].device_kind
    cpu = platform.processor() or platform.machine()
    return (f"{len(devices)}× {kind} ({jax.default_backend()}), {os.cpu_count()} host cores"
            f" {cpu}, jax {jax.__version__}")


def run(name: str, *, scale: str, out: str, workdir: str | None = None,
        seeds: int | None = None, data_dir: str = "") -> dict:
    if name not in EXPERIMENTS:
        raise DistillError(f"unknown table {name!r}; available: {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    seeds = seeds or experiment.default_seeds
    workdir = workdir or os.path.join("runs", f"{name}_{scale}")
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
        "command": "jaxdistill " + shlex.join(["reproduce", *sys.argv[2:]])
        if sys.argv[1:2] == ["reproduce"] else f"jaxdistill reproduce {name} --scale {scale}",
        "seeds": list(range(seeds)),
        "rows": [{
            "setting": row.setting,
            **_stats(row.values),
            "paper": row.paper,
            **({"extra": {name: _stats(values) for name, values in row.extra.items()}}
               if row.extra else {}),
        } for row in rows],
    }
    if jax.process_index() == 0:  # in a multi-process run, one table
        os.makedirs(out, exist_ok=True)
        _copy_images(rows, out, f"{name}_{scale}")
        markdown = _markdown(experiment, result, rows)
        for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown)):
            _write_with_latest_link(out, name, scale, suffix, text)
        print(markdown)
    return result


def _copy_images(rows: list[Row], out: str, folder: str) -> None:
    """Copies each row's PNG to OUT/NAME_SCALE/ and points the row at the copy (relative to
    OUT, where the table is)."""
    for row in rows:
        if row.image:
            os.makedirs(os.path.join(out, folder), exist_ok=True)
            target = os.path.join(folder, os.path.basename(row.image))
            shutil.copyfile(row.image, os.path.join(out, target))
            row.image = target


def _write_with_latest_link(out: str, name: str, scale: str, suffix: str, text: str) -> None:
    """Writes OUT/NAME_SCALE.SUFFIX, and points OUT/NAME.SUFFIX (DESIGN.md's name) at it, so
    tables of every scale live side by side and NAME.SUFFIX is always the newest one."""
    filename = f"{name}_{scale}{suffix}"
    with open(os.path.join(out, filename), "w") as f:
        f.write(text)
    latest = os.path.join(out, name + suffix)
    if os.path.islink(latest) or os.path.exists(latest):
        os.remove(latest)
    os.symlink(filename, latest)


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "— | "
    return f"{stats['value']:.4g} ± {stats['std']:.2g} | "


def _note(row: Row) -> str:
    return " ".join(filter(None, [row.note, f"[samples]({row.image})" if row.image else ""]))


def _markdown(experiment: Experiment, result: dict, rows: list[Row]) -> str:
    extra = list(dict.fromkeys(name for row in rows for name in row.extra))
    header = [
        f"# {experiment.name} ({result['scale']})",
        "",
        experiment.description,
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['device']}",
        f"- wall time: {result['wall_s']} s; seeds: {result['seeds']}",
        f"- metric: {result['metric']} ({'higher' if result['higher_is_better'] else 'lower'}"
        " is better); mean ± std over seeds",
        f"- paper: {experiment.paper_reference}",
        "",
        "| setting | ours | per seed | " + "".join(f"{name} | " for name in extra)
        + "paper | note |",
        "|---|---|---|" + "---|" * len(extra) + "---|---|",
    ]
    lines = [
        f"| {r['setting']} | {r['value']:.4f} ± {r['std']:.4f} | "
        f"{', '.join(f'{v:.4f}' for v in r['seeds'])} | "
        + "".join(_cell(r.get("extra", {}).get(name)) for name in extra)
        + f"{'—' if r['paper'] is None else r['paper']} | {_note(row)} |"
        for r, row in zip(result["rows"], rows)
    ]
    notes = experiment.notes(result["scale"], rows)
    return "\n".join(header + lines + ([""] + [notes] if notes else [])) + "\n"
