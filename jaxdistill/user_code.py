"""Code a config names from outside the package: `path/to/file.py:NAME` or `module.path:NAME`.

Methods (`config.method`) and models (`config.student.model`, a teacher run's model) may live in
the user's own files; this imports them once per process, each file as its own module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import types

from jaxdistill.errors import DistillError


def split(name: str) -> tuple[str, str] | None:
    """(source, attribute) of `source:attribute`, None for a plain registered name."""
    source, colon, attribute = name.rpartition(":")
    return (source, attribute) if colon else None


@functools.cache
def load(source: str, what: str) -> types.ModuleType:
    """The module of a file path or an importable module path; `what` ("method", "model")
    names it in errors."""
    if not source.endswith(".py"):
        try:
            return importlib.import_module(source)
        except ModuleNotFoundError as e:
            raise DistillError(f"cannot import {what} module {source!r} ({e}); name a file as"
                               " path/to/file.py:NAME or an importable module as module:NAME"
                               ) from None
    if not os.path.isfile(source):
        raise DistillError(f"{what} file {source} does not exist; name it as"
                           " path/to/file.py:NAME")
    path = os.path.abspath(source)
    module_name = f"jaxdistill_user_{what}_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: its error on one line
        del sys.modules[module_name]
        raise DistillError(f"{what} file {source} does not load: {type(e).__name__}: {e}"
                           ) from None
    return module
