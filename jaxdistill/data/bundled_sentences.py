"""English sentences from the documentation CPython ships, as a TFDS dataset in array_record.

Documents are the `pydoc_data.topics` entries (the language reference's topics) and the
docstrings of the standard library's top-level modules, read with `ast` (nothing is imported).
Each document goes wholly to one split, chosen by a hash of its name (about 80/10/10), so no
held-out sentence shares a paragraph with a training one. Paragraphs holding code (doctests,
`::` blocks) are skipped; sentences are 6–40 words of mostly letters, deduplicated across the
whole corpus (a repeated sentence stays in the first document, in name order).

The corpus is whatever the running Python ships, so its sizes differ a little between Python
versions; the dataset's version records the Python it was built with.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
import sysconfig
from typing import Iterator

import tensorflow_datasets as tfds

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SPLIT_BUCKETS = {"test": range(0, 10), "validation": range(10, 20), "train": range(20, 100)}


def _module_docstrings(path: str) -> str:
    tree = ast.parse(open(path, encoding="utf-8").read())
    nodes = (n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return "\n\n".join(filter(None, (ast.get_docstring(n) for n in nodes)))


def documents() -> dict[str, str]:
    """Document name -> its text."""
    import pydoc_data.topics

    docs = {f"topic:{name}": text for name, text in pydoc_data.topics.topics.items()}
    stdlib = sysconfig.get_paths()["stdlib"]
    for filename in sorted(os.listdir(stdlib)):
        if filename.endswith(".py"):
            try:
                docs[f"module:{filename[:-3]}"] = _module_docstrings(os.path.join(stdlib, filename))
            except (SyntaxError, UnicodeDecodeError):  # a few stdlib files are test fixtures
                continue
    return docs


def sentences(text: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        if ">>>" in paragraph or "::" in paragraph:
            continue
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if (6 <= len(sentence.split()) <= 40 and sentence[0].isupper()
                    and sentence.endswith(".") and letters > 0.85 * len(sentence)):
                yield sentence


def split_of(document: str) -> str:
    bucket = int(hashlib.sha256(document.encode()).hexdigest(), 16) % 100
    return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def corpus() -> dict[str, list[tuple[str, str]]]:
    """Split -> [(document, sentence)], deduplicated, in a fixed order."""
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in _SPLIT_BUCKETS}
    for name, text in sorted(documents().items()):
        for sentence in sentences(text):
            if sentence not in seen:
                seen.add(sentence)
                splits[split_of(name)].append((name, sentence))
    return splits


class BundledSentences(tfds.core.GeneratorBasedBuilder):
    """Sentences from CPython's bundled documentation (pydoc topics and stdlib docstrings)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(
        name=f"py{sys.version_info.major}{sys.version_info.minor}",
        description="built from this Python's documentation")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "document": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the text ships with Python
        splits = corpus()
        return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows):
        for index, (document, sentence) in enumerate(rows):
            yield index, {"text": sentence, "document": document}
