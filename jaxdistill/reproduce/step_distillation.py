"""The step-distillation tables (cd2023, ict2023, scm2024, meanflow2025, dmd2_2024): a teacher
sampled at many network evaluations against students sampled in one and two steps.

Per data kind (the 2-D checkerboard, scored by the sliced Wasserstein distance to its 5,000
test points; the UCI digits, scored by FD, the Fréchet distance in the penultimate features of
the project's digits classifier, `hinton_teacher_digits`, against the 1,257 training images):
- a reference row: the metric between two real samples (the floor sampling noise allows);
- the teacher (`diffusion_2d` or `diffusion_images` at SCALE, trained once with seed 0, shared by
  every table in WORKDIR/..) with Euler at 1 and 2 steps and Heun at 2, 4, 9 and 18 steps
  (1, 2, 3, 7, 17 and 35 network evaluations), one sampling seed per table seed;
- each student config, trained once per seed, sampled in 1 and 2 steps.
Every row also saves a PNG of its seed-0 samples (a scatter plot or a grid of digits).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import checkpoint, data, evaluate, loading, train
from jaxdistill.diffusion import distances, parameterizations, sampling
from jaxdistill.errors import DistillError
from jaxdistill.reproduce.table import ConfigLoader, Experiment, Row, train_shared

TEACHER_SAMPLERS = (("euler", 1), ("euler", 2), ("heun", 2), ("heun", 4), ("heun", 9),
                    ("heun", 18))
STUDENT_STEPS = (1, 2)
KINDS = ("2d", "digits")
_DIGIT_GRID = 8  # an 8 × 8 grid of samples per digits row


@dataclasses.dataclass(frozen=True)
class Student:
    label: str
    config: str                       # the config module, loaded as CONFIG:SCALE,KIND
    overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Scorer:
    """How one data kind's samples are drawn and scored."""

    kind: str
    metric: str
    reference: np.ndarray            # the real sample the metric compares against
    labels: np.ndarray | None        # the class of each sample to draw (conditional models)
    score: object                    # samples -> float
    floor: float                     # the metric between two real samples
    floor_note: str
    # Each run is loaded once and each (run, sampler, steps) compiled once, whatever the seed:
    # a teacher is drawn from at six samplers × every seed.
    _models: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _samplers: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def draw(self, run_dir: str, sampler: str, steps: int, seed: int) -> np.ndarray:
        """As many samples as the reference holds, from the run's (EMA) model."""
        if run_dir not in self._models:
            self._models[run_dir] = loading.run(run_dir)
        model = self._models[run_dir]
        key = (run_dir, sampler, steps)
        if key not in self._samplers:
            self._samplers[key] = self._sampler(model.run_config, model.module, sampler, steps)
        sample, labels = self._samplers[key]
        return np.asarray(sample(model.params, jax.random.key(1000 + seed), labels))

    def _sampler(self, config, module, sampler: str, steps: int):
        """A jitted `sample(params, rng, labels)` and the labels to call it with."""
        param = parameterizations.parameterization(config.diffusion)
        num_classes = config.student.get("num_classes", 0) or 0
        labels = None if self.labels is None or not num_classes else jnp.asarray(self.labels)

        @jax.jit
        def sample(params, rng, labels):
            net = sampling.network(module, params, config.generation.guidance, num_classes)
            return sampling.sample(param, net, rng, self.reference.shape, labels,
                                   sampler=sampler, steps=steps,
                                   times=tuple(config.generation.times))

        return sample, labels


def _split(data_config, split: str) -> dict:
    count, read = data.reader(data_config, split)
    return read(np.arange(count))


def _scorer(kind: str, data_config, classifier_dir: str | None) -> Scorer:
    test, train_points = _split(data_config, "test")["x"], _split(data_config, "train")["x"]
    if kind == "2d":
        score = functools.partial(_swd, reference=test)
        return Scorer(kind, "SWD", test, None, score, score(train_points[:len(test)]),
                      f"train[:{len(test)}] vs test")
    features = _digit_features(classifier_dir)
    reference = _split(data_config, "train")
    score = functools.partial(_fd, features=features, reference=features(reference["x"]))
    return Scorer(kind, "FD", reference["x"], np.asarray(reference["label"]), score,
                  score(test), "test (360) vs train; small n inflates FD")


def _swd(samples, reference):
    return distances.sliced_wasserstein(np.nan_to_num(samples), reference)


def _fd(samples, features, reference):
    return distances.frechet_distance(features(np.nan_to_num(samples)), reference)


def _classifier(load: ConfigLoader, scale: str, workdir: str) -> str:
    """The project's digits classifier (the hinton2015 teacher), trained once beside the
    tables: its penultimate features define FD, in the tables and in the digits runs' logs."""
    config = load(f"hinton_teacher_digits:{'smoke' if scale == 'smoke' else 'local'}")
    return train_shared(config, workdir, f"hinton_teacher_digits_{scale}")[0]


def _digit_features(classifier_dir: str):
    apply = jax.jit(evaluate.classifier_features(classifier_dir))
    return lambda images: np.asarray(apply(jnp.asarray(images)))


def train_teacher(load: ConfigLoader, scale: str, kind: str, parameterization: str,
                  student: Student, workdir: str, classifier_dir: str | None) -> str:
    """The diffusion teacher of one data kind and parameterization (the one `student`'s config
    names), trained once (seed 0) and resumed (evaluated only) by every later table."""
    config = load(load(f"{student.config}:{scale},{kind}").teacher.config)
    config.generation.fd_classifier = classifier_dir or ""
    return train_shared(config, workdir, f"diffusion_{kind}_{parameterization}_{scale}")[0]


# Half the width of the 2-D scatter plots' view (the checkerboard lies within ±2).
_VIEW = 3.0


def save_png(samples: np.ndarray, path: str, title: str) -> str:
    """A scatter plot (2-D points) or a grid of the first 64 images, as PNG."""
    # Imported here, after choosing the file-only backend: importing pyplot first would pick an
    # interactive one, and only the tables that draw PNGs need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure, axes = plt.subplots(figsize=(4, 4), dpi=80)
    if samples.ndim == 2:
        axes.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4)
        axes.set_xlim(-_VIEW, _VIEW)
        axes.set_ylim(-_VIEW, _VIEW)
        outside = int(np.sum(~np.all(np.abs(samples) <= _VIEW, axis=-1)))  # NaN counts too
        title = f"{title}\n{outside} of {len(samples)} points outside the view"
    else:
        count = _DIGIT_GRID ** 2
        tiles = np.clip(np.nan_to_num(samples[:count, ..., 0]), -1, 1)
        # A blank (−1) gutter around each tile, or neighbouring digits run into each other.
        tiles = np.pad(tiles, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
        size = tiles.shape[1]
        grid = tiles.reshape(_DIGIT_GRID, _DIGIT_GRID, size, size).transpose(0, 2, 1, 3)
        axes.imshow(grid.reshape(_DIGIT_GRID * size, _DIGIT_GRID * size), cmap="gray_r",
                    vmin=-1, vmax=1)
        axes.axis("off")
    axes.set_title(title, fontsize=8)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _sampled_row(setting: str, run_dirs: list[str], scorer: Scorer, sampler: str, steps: int,
                 workdir: str, note: str = "") -> Row:
    values, image = [], None
    for seed, run_dir in enumerate(run_dirs):
        samples = scorer.draw(run_dir, sampler, steps, seed)
        values.append(scorer.score(samples))
        if seed == 0:
            image = save_png(samples, os.path.join(workdir, "samples", _slug(setting) + ".png"),
                             f"{setting}: {scorer.metric} {values[0]:.3g}")
    return Row(setting, values, note=note, image=image)


def _kind_rows(kind: str, scale: str, workdir: str, seeds: int, load: ConfigLoader,
               parameterization: str, students: tuple[Student, ...]) -> list[Row]:
    classifier_dir = _classifier(load, scale, workdir) if kind == "digits" else None
    teacher_dir = train_teacher(load, scale, kind, parameterization, students[0], workdir,
                                classifier_dir)
    scorer = _scorer(kind, checkpoint.read_config(teacher_dir).data, classifier_dir)
    prefix = "2-D" if kind == "2d" else "digits"
    rows = [Row(f"{prefix}: data ({scorer.floor_note})", [scorer.floor] * seeds,
                note=f"{scorer.metric} floor")]
    for sampler, steps in TEACHER_SAMPLERS:
        nfe = sampling.nfe(steps, sampler)
        rows.append(_sampled_row(
            f"{prefix}: teacher ({parameterization}), {sampler} NFE={nfe}", [teacher_dir] * seeds,
            scorer, sampler, steps, workdir))
    for student in students:
        run_dirs, resumed = [], 0
        for seed in range(seeds):
            config = load(f"{student.config}:{scale},{kind}")
            config.update_from_flattened_dict(student.overrides)
            config.seed = seed
            config.generation.fd_classifier = classifier_dir or ""
            if config.teacher.config:
                config.teacher.checkpoint = teacher_dir
            run_dir = os.path.join(workdir, f"{kind}_{_slug(student.label)}_seed{seed}")
            resumed += checkpoint.has_checkpoint(run_dir)
            train.train_and_evaluate(config, run_dir, progress=False)
            run_dirs.append(run_dir)
        sampler = checkpoint.read_config(run_dirs[0]).generation.sampler
        # A run found in WORKDIR is resumed where it stopped (not retrained): say so, since this
        # table's wall time then leaves out its training.
        note = f"{resumed} of {seeds} runs resumed from an earlier invocation" if resumed else ""
        for steps in STUDENT_STEPS:
            rows.append(_sampled_row(f"{prefix}: {student.label}, {steps} step{'s' * (steps > 1)}",
                                     run_dirs, scorer, sampler, steps, workdir, note))
    return rows


def experiment(name: str, description: str, paper_reference: str, parameterization: str,
               students: tuple[Student, ...], notes=lambda scale, rows: "") -> Experiment:
    """A step-distillation table: every kind's teacher rows, then each student's."""

    def rows(scale: str, workdir: str, seeds: int, load: ConfigLoader) -> list[Row]:
        if scale == "paper":
            raise DistillError(
                f"{name} at paper scale is CIFAR-10, scored by FID, whose Inception network is"
                " not bundled: train its configs with :paper on a GPU/TPU"
                f" (`jaxdistill train --config {students[0].config}:paper ...`) and score the"
                " samples with an FID tool")
        return [row for kind in KINDS for row in _kind_rows(
            kind, scale, workdir, seeds, load, parameterization, students)]

    return Experiment(
        name=name, description=description + "\n\n" + __doc__.split("\n\n", 1)[1].strip(),
        metric="SWD on 2-D rows, FD on digits rows", higher_is_better=False, default_seeds=2,
        paper_reference=paper_reference, rows=rows, notes=notes)
