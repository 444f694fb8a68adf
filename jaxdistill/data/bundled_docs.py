"""Whole documents of the documentation CPython ships, as a TFDS dataset in array_record.

An LM corpus: the documents of `cpython_docs` (pydoc topics and stdlib docstrings), code examples
included, one example (`name`, `text`) per document, split by document like
`bundled_sentences`. Whitespace is normalised (trailing spaces dropped, runs of blank lines
collapsed to one blank line, blank lines at either end removed); indentation stays, since code
blocks depend on it. Modules without docstrings give empty documents, which are left out.
"""

from __future__ import annotations

import re
from typing import ClassVar

import tensorflow_datasets as tfds

from jaxdistill.data.cpython_docs import SPLIT_BUCKETS, BundledTextBuilder, documents, split_of


def normalise(text: str) -> str:
    lines = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", lines).strip("\n")


def corpus() -> dict[str, dict[str, str]]:
    """Split -> {document name: normalised text}, without empty documents."""
    splits: dict[str, dict[str, str]] = {split: {} for split in SPLIT_BUCKETS}
    for name, text in sorted(documents().items()):
        if text := normalise(text):
            splits[split_of(name)][name] = text
    return splits


class BundledDocs(BundledTextBuilder, tfds.core.GeneratorBasedBuilder):
    """Documents of CPython's bundled documentation (pydoc topics and stdlib docstrings)."""

    FEATURES: ClassVar[dict[str, tfds.features.FeatureConnector]] = {
        "name": tfds.features.Text(), "text": tfds.features.Text()}

    def _generate_examples(self, docs: dict[str, str]):
        for name, text in docs.items():
            yield name, {"name": name, "text": text}
