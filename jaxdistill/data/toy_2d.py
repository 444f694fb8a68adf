"""2-D toy distributions for flow and consistency models, as a TFDS dataset in array_record.

Configs `toy_2d/eight_gaussians`, `toy_2d/two_moons` and `toy_2d/checkerboard`, each drawn once
from a fixed seed (so every run and every machine sees the same points), in their usual
coordinates (per-coordinate std: checkerboard ≈ 1.15, eight Gaussians ≈ 1.43, two moons ≈ 1.7
and 1.0; the configs' σ_data = 1 fits the checkerboard best). Splits: train 20,000 /
validation 2,000 / test 5,000.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SIZES = {"train": 20_000, "validation": 2_000, "test": 5_000}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight modes on a circle of radius 2 (std 0.2 each), as in the FFJORD/CNF papers."""
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return centers + 0.2 * rng.normal(size=(n, 2))


def two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's interleaving half circles (noise 0.05), centred and scaled."""
    upper = rng.random(n) < 0.5
    angles = np.pi * rng.random(n)
    points = np.where(upper[:, None],
                      np.stack([np.cos(angles), np.sin(angles)], -1),
                      np.stack([1 - np.cos(angles), 0.5 - np.sin(angles)], -1))
    points += 0.05 * rng.normal(size=(n, 2))
    return (points - np.array([0.5, 0.25])) * 2.0


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """The 4×4 checkerboard on [−2, 2]² with alternate squares filled."""
    x = rng.uniform(-2, 2, n)
    y = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2  # [-2, -1) or [0, 1)
    y += np.floor(x) % 2  # shift odd columns up by one square
    return np.stack([x, y], axis=-1)


DISTRIBUTIONS = {"eight_gaussians": eight_gaussians, "two_moons": two_moons,
                 "checkerboard": checkerboard}


class Toy2d(tfds.core.GeneratorBasedBuilder):
    """2-D toy point clouds for generative-model tests."""

    name = "toy_2d"

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=fn.__doc__)
                       for name, fn in DISTRIBUTIONS.items()]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__,
            features=tfds.features.FeaturesDict(
                {"point": tfds.features.Tensor(shape=(2,), dtype=np.float32)}))

    def _split_generators(self, dl_manager):
        del dl_manager  # drawn, not downloaded
        return {name: self._generate_examples(name) for name in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        draw = DISTRIBUTIONS[self.builder_config.name]
        points = draw(np.random.default_rng(_SPLIT_SEEDS[split]), SPLIT_SIZES[split])
        for index, point in enumerate(points.astype(np.float32)):
            yield index, {"point": point}
