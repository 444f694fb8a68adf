"""English sentences from the documentation CPython ships, as a TFDS dataset in array_record.

The documents of `cpython_docs` (pydoc topics and stdlib docstrings), split by document (about
80/10/10), so no held-out sentence shares a paragraph with a training one. Paragraphs holding
code (doctests, `::` blocks) are skipped; sentences are 6–40 words of mostly letters,
deduplicated across the whole corpus (a repeated sentence stays in the first document, in name
order).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

import tensorflow_datasets as tfds

from jaxdistill.data.cpython_docs import SPLIT_BUCKETS, BundledTextBuilder, documents, split_of

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        if ">>>" in paragraph or "::" in paragraph:
            continue
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if (6 <= len(sentence.split()) <= 40 and sentence[0].isupper()
                    and sentence.endswith(".") and letters > 0.85 * len(sentence)):
                yield sentence


def corpus() -> dict[str, list[tuple[str, str]]]:
    """Split -> [(document, sentence)], deduplicated, in a fixed order."""
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLIT_BUCKETS}
    for name, text in sorted(documents().items()):
        for sentence in sentences(text):
            if sentence not in seen:
                seen.add(sentence)
                splits[split_of(name)].append((name, sentence))
    return splits


class BundledSentences(BundledTextBuilder, tfds.core.GeneratorBasedBuilder):
    """Sentences from CPython's bundled documentation (pydoc topics and stdlib docstrings)."""

    FEATURES: ClassVar[dict[str, tfds.features.FeatureConnector]] = {
        "text": tfds.features.Text(), "document": tfds.features.Text()}

    def _generate_examples(self, rows: list[tuple[str, str]]):
        for index, (document, sentence) in enumerate(rows):
            yield index, {"text": sentence, "document": document}
