"""scikit-learn's UCI handwritten digits as a TFDS dataset written to array_record (no TensorFlow).

1,797 8×8 grey images with pixel values 0–16, rescaled here to 0–255 so they read like MNIST.
Splits are stratified and fixed (seed 0): train 1,257 / validation 180 / test 360.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

_SPLIT_SEED = 0
_TEST_FRACTION = 0.2
_VALIDATION_FRACTION = 0.1


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=_TEST_FRACTION, stratify=labels, random_state=_SPLIT_SEED)
    train, validation = train_test_split(
        rest, test_size=_VALIDATION_FRACTION / (1 - _TEST_FRACTION), stratify=labels[rest],
        random_state=_SPLIT_SEED)
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """UCI ML hand-written digits, as shipped by scikit-learn."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships with scikit-learn
        return {name: self._generate_examples(name) for name in ("train", "validation", "test")}

    def _generate_examples(self, split: str):
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for index in _split_indices(digits.target)[split]:
            yield int(index), {"image": images[index], "label": int(digits.target[index])}
