"""The documentation CPython ships, as named documents: the corpus of the bundled text datasets.

Documents are the `pydoc_data.topics` entries (the language reference's topics) and the
docstrings of the standard library's top-level modules, read with `ast` (nothing is imported).
Each document goes wholly to one split, chosen by a hash of its name (about 80/10/10), so
held-out text never shares a document with training text.

The corpus is whatever the running Python ships, so its sizes differ a little between Python
versions; the datasets' builder config names the Python they were built with.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pydoc_data.topics
import sys
import sysconfig
from typing import ClassVar

import tensorflow_datasets as tfds

SPLIT_BUCKETS = {"test": range(10), "validation": range(10, 20), "train": range(20, 100)}

BUILDER_CONFIG = tfds.core.BuilderConfig(
    name=f"py{sys.version_info.major}{sys.version_info.minor}",
    description="built from this Python's documentation")


def _module_docstrings(path: str) -> str:
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    nodes = (n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return "\n\n".join(filter(None, (ast.get_docstring(n) for n in nodes)))


def documents() -> dict[str, str]:
    """Document name -> its text."""
    docs = {f"topic:{name}": text for name, text in pydoc_data.topics.topics.items()}
    stdlib = sysconfig.get_paths()["stdlib"]
    for filename in sorted(os.listdir(stdlib)):
        if filename.endswith(".py"):
            try:
                docs[f"module:{filename[:-3]}"] = _module_docstrings(os.path.join(stdlib, filename))
            except (SyntaxError, UnicodeDecodeError):  # a few stdlib files are test fixtures
                continue
    return docs


def split_of(document: str) -> str:
    bucket = int(hashlib.sha256(document.encode()).hexdigest(), 16) % 100
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


class BundledTextBuilder:
    """What the bundled text datasets share: version, builder config (this Python) and one split
    per `SPLIT_BUCKETS` entry, generated from the builder module's `corpus()` and described by its
    docstring. A dataset subclasses this, then `tfds.core.GeneratorBasedBuilder`, and gives its
    `FEATURES` and `_generate_examples(entries)`, which keys the entries `corpus()` gives a split.

    Not a `GeneratorBasedBuilder` itself: TFDS registers every concrete subclass of that as a
    dataset.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [BUILDER_CONFIG]
    FEATURES: ClassVar[dict[str, tfds.features.FeatureConnector]]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,
            features=tfds.features.FeaturesDict(self.FEATURES),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the text ships with Python
        corpus = sys.modules[type(self).__module__].corpus()
        return {split: self._generate_examples(entries) for split, entries in corpus.items()}
