"""Model registry: `build(model_config)` returns a Flax module from a config's `model` name.

Every module is called as `module.apply(params, inputs, train=bool, rngs=...)` and annotates its
parameters with logical axis names, which `jaxdistill.sharding` maps onto the mesh.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import ml_collections

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
    if name not in MODELS:
        raise DistillError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise DistillError(f"bad fields for model {name!r}: {e}") from None
