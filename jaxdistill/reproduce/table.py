"""A reproduced table: the `Experiment` a paper module defines, the `Row`s it measures, and the
files they are written to (OUT/NAME_SCALE.md and OUT/NAME_SCALE.json, DESIGN.md's schema, with
OUT/NAME.md and OUT/NAME.json linked to the newest of them).

A module of its own rather than part of `jaxdistill.reproduce`: that package imports every
experiment module, and they import these types.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

import ml_collections
import numpy as np

from jaxdistill import train

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


def train_shared(config: ml_collections.ConfigDict, workdir: str, name: str) -> tuple[str, dict]:
    """Trains `config` into WORKDIR/../NAME, a run shared by every table beside WORKDIR (a
    teacher, or the classifier a metric reads): the first table trains it, every later one
    resumes it at its last step (evaluated only). Returns the run's directory and summary."""
    run_dir = os.path.join(os.path.dirname(os.path.abspath(workdir)), name)
    return run_dir, train.train_and_evaluate(config, run_dir, progress=False)


def stats(values: list[float]) -> dict:
    """A metric's JSON entry: mean, std and the value of every seed."""
    return {"value": float(np.mean(values)), "std": float(np.std(values)),
            "seeds": [float(v) for v in values]}


def json_rows(rows: list[Row]) -> list[dict]:
    return [{
        "setting": row.setting,
        **stats(row.values),
        "paper": row.paper,
        **({"extra": {name: stats(values) for name, values in row.extra.items()}}
           if row.extra else {}),
    } for row in rows]


def write(experiment: Experiment, result: dict, rows: list[Row], out: str) -> str:
    """Writes the table's JSON (`result`) and markdown, and each row's PNG, under `out`;
    returns the markdown."""
    name, scale = result["name"], result["scale"]
    os.makedirs(out, exist_ok=True)
    _copy_images(rows, out, f"{name}_{scale}")
    markdown = _markdown(experiment, result, rows)
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown)):
        _write_with_latest_link(out, name, scale, suffix, text)
    return markdown


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


def _cell(metric: dict | None) -> str:
    if metric is None:
        return "— | "
    return f"{metric['value']:.4g} ± {metric['std']:.2g} | "


def _note(row: Row) -> str:
    return " ".join(filter(None, [row.note, f"[samples]({row.image})" if row.image else ""]))


def _markdown(experiment: Experiment, result: dict, rows: list[Row]) -> str:
    extra = list(dict.fromkeys(name for row in rows for name in row.extra))
    smoke = (["**smoke: checks the path, numbers mean nothing** (seconds of training; the paper"
              " column is for the local and paper scales)", ""]
             if result["scale"] == "smoke" else [])
    header = [
        f"# {experiment.name} ({result['scale']})",
        "",
        *smoke,
        experiment.description,
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['device']}",
        f"- wall time: {result['wall_s']} s; seeds: {result['seeds']}",
        (f"- metric: {result['metric']} ({'higher' if result['higher_is_better'] else 'lower'}"
         " is better); mean ± std over seeds"),
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
