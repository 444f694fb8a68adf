"""Model registry: `build(model_config)` returns a Flax module from a config's `model` name.

Every module is called as `module.apply(params, inputs, train=bool, rngs=...)` and annotates its
parameters with logical axis names, which `jaxdistill.sharding` maps onto the mesh.

A model of your own is a Flax module in your file, named as `path/to/file.py:ClassName` (or
`package.module:ClassName`) in `model`; the config's other fields are its attributes. It takes
the dataset's inputs (`DatasetSpec.inputs`, in order) and `train`, and returns what the task's
methods read (a classifier: logits [B, classes]); parameters without logical axis annotations
(`nn.with_logical_partitioning`) are replicated.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import ml_collections

from jaxdistill import user_code
from jaxdistill.errors import DistillError
from jaxdistill.models import pretrained
from jaxdistill.models.bert import Bert
from jaxdistill.models.classifiers import CNN, MLP
from jaxdistill.models.denoisers import DenoiserMLP, DiT
from jaxdistill.models.llama import Llama
from jaxdistill.models.pretrained import from_pretrained

__all__ = ["MODELS", "build", "from_pretrained", "pretrained"]

MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN, "bert": Bert,
                                               "llama": Llama, "denoiser_mlp": DenoiserMLP,
                                               "dit": DiT}


def build(model_config: ml_collections.ConfigDict) -> nn.Module:
    """Builds the module named by `model_config.model` from the rest of the config's fields."""
    kwargs = model_config.to_dict()
    name = kwargs.pop("model")
    model = _user_model(name) if user_code.split(name) else MODELS.get(name)
    if model is None:
        raise DistillError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}"
                           " or name your own as path/to/file.py:ClassName")
    try:
        return model(**kwargs)
    except TypeError as e:
        raise DistillError(f"bad fields for model {name!r}: {e}") from None


def _user_model(name: str) -> Callable[..., nn.Module]:
    source, attribute = user_code.split(name)
    model = getattr(user_code.load(source, "model"), attribute, None)
    if not (isinstance(model, type) and issubclass(model, nn.Module)):
        raise DistillError(f"{source} has no Flax module {attribute!r} (model {name!r}); name a"
                           " flax.linen.Module class defined there")
    return model
