"""JAX-native knowledge distillation: see README.md, `jaxdistill --help` and `jaxdistill.run`."""

import importlib.metadata

__version__ = importlib.metadata.version("jaxdistill")
