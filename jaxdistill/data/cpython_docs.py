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
import sys
import sysconfig

import tensorflow_datasets as tfds

SPLIT_BUCKETS = {"test": range(0, 10), "validation": range(10, 20), "train": range(20, 100)}

BUILDER_CONFIG = tfds.core.BuilderConfig(
    name=f"py{sys.version_info.major}{sys.version_info.minor}",
    description="built from this Python's documentation")


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


def split_of(document: str) -> str:
    bucket = int(hashlib.sha256(document.encode()).hexdigest(), 16) % 100
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)
