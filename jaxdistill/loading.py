"""The one way to load a trained model: a jaxdistill run's student or a Hugging Face model.

A run directory is rebuilt from its config.json (the student's model settings and the dataset
that fixes its input shapes) and its newest checkpoint; a pretrained model from its own files.
`place` maps the model's logically annotated abstract params to the shardings its params are
restored into, so a teacher lands directly in its layout and never as a full copy on one device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxdistill import checkpoint, data, models
from jaxdistill.errors import DistillError

Placement = Callable[[Any], Any]  # boxed abstract params -> a tree of shardings
# (model settings, the run's config or None) -> raises on a model that cannot serve
ModelCheck = Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict | None], None]


@dataclasses.dataclass(frozen=True)
class Loaded:
    module: nn.Module
    model_config: ml_collections.ConfigDict
    params: Any                                        # {"params": ...}, placed
    shardings: Any
    run_config: ml_collections.ConfigDict | None       # None for a pretrained model
    # A run's checkpoint: {"checkpoint", "step", "fingerprint"}; None for a pretrained model.
    identity: dict | None = None
    tokenizer: Any = None  # a pretrained model's own tokenizer (transformers'), when it has one


def on_one_device(boxed) -> Any:
    """Everything on the default device: for sampling or evaluating outside a training run."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda _: device, nn.unbox(boxed))


def _abstract(module: nn.Module, example_inputs) -> Any:
    return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                          *example_inputs)


def _placed(module: nn.Module, example_inputs, place: Placement,
            overrides: dict | None = None) -> tuple[Any, Any]:
    """The module's abstract params, each with the sharding `place` gives it and the dtype it is
    stored in (see `_stored`), and the shardings."""
    boxed = _abstract(module, example_inputs)
    shardings = place(boxed)
    return jax.tree.map(lambda a, s: _stored(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                             overrides or {}),
                        nn.unbox(boxed), shardings), shardings


def compute_settings(config: ml_collections.ConfigDict) -> dict:
    """How the teacher computes: config.teacher's dtype and attention where set, the dtype of
    config.precision otherwise."""
    settings = {key: config.teacher[key] for key in ("dtype", "attention")
                if config.teacher.get(key)}
    if config.get("precision", "float32") != "float32":
        settings.setdefault("dtype", config.precision)
    return settings


def _stored(leaf, overrides: dict):
    """A frozen model's params are stored in its compute dtype (`overrides`' dtype): a teacher
    run in bfloat16 needs no float32 copy."""
    dtype = overrides.get("dtype")
    return leaf if dtype is None else jax.ShapeDtypeStruct(
        leaf.shape, jnp.dtype(dtype), sharding=leaf.sharding)


def _module(model_config: ml_collections.ConfigDict, overrides: dict) -> nn.Module:
    return models.build(ml_collections.ConfigDict({**model_config.to_dict(), **overrides}))


def run(run_dir: str, place: Placement = on_one_device, example_inputs=None,
        check: ModelCheck = lambda model_config, run_config: None,
        finished: bool = False, overrides: dict | None = None) -> Loaded:
    """The student of the run in `run_dir` at its newest checkpoint (its EMA when it kept one),
    traced with `example_inputs` (default: one example of the run's own dataset); `check` sees
    its model settings before anything is restored. With `finished` the run must have trained
    all of its steps. `overrides` change module fields that do not affect the weights (a dtype
    also stores the params in it, see `_stored`)."""
    run_config = checkpoint.read_config(run_dir)
    check(run_config.student, run_config)
    step = checkpoint.newest_step(run_dir)
    if finished and step < run_config.total_steps:
        raise DistillError(
            f"the teacher at {run_dir} has trained {step} of its {run_config.total_steps} steps;"
            f" finish it (`jaxdistill train --workdir {run_dir} ...`) or set"
            " config.teacher.allow_unfinished=True to distil from it as it is")
    overrides = overrides or {}
    module = _module(run_config.student, overrides)
    if example_inputs is None:
        example_inputs = data.spec(run_config.data).example_inputs()
    abstract, shardings = _placed(module, example_inputs, place, overrides)
    params = checkpoint.load_params(run_dir, abstract, step=step,
                                    ema=run_config.get("ema_decay", 0.0) > 0)
    identity = {"checkpoint": os.path.abspath(run_dir), "step": step,
                "fingerprint": checkpoint.fingerprint(run_dir, step)}
    return Loaded(module, run_config.student, params, shardings, run_config, identity)


def planned(run_config: ml_collections.ConfigDict, place: Placement, example_inputs,
            check: ModelCheck = lambda model_config, run_config: None,
            overrides: dict | None = None) -> Loaded:
    """The model a run of `run_config` will train, as abstract params (shapes and shardings):
    what a command checks a student against before it trains that run as its teacher."""
    check(run_config.student, run_config)
    overrides = overrides or {}
    module = _module(run_config.student, overrides)
    abstract, shardings = _placed(module, example_inputs, place, overrides)
    return Loaded(module, run_config.student, abstract, shardings, run_config)


def pretrained(name: str, example_inputs, place: Placement = on_one_device,
               check: ModelCheck = lambda model_config, run_config: None,
               overrides: dict | None = None) -> Loaded:
    """A Hugging Face model (a directory or a known name), placed by `place`; `overrides` as
    for `run`."""
    overrides = overrides or {}
    model_config = ml_collections.ConfigDict(
        {**models.pretrained.model_config(name), **overrides})
    check(model_config, None)
    shardings = place(_abstract(models.build(model_config), example_inputs))
    by_path = flax.traverse_util.flatten_dict(shardings["params"])
    dtype = overrides.get("dtype", "float32")
    loaded = models.from_pretrained(
        name, put=lambda path, array: jax.device_put(array.astype(dtype), by_path[path]),
        **overrides)
    return Loaded(loaded.module, model_config, {"params": loaded.params}, shardings, None,
                  tokenizer=loaded.tokenizer)


def teacher(config: ml_collections.ConfigDict, example_inputs,
            place: Placement = on_one_device,
            check: ModelCheck = lambda model_config, run_config: None) -> Loaded:
    """The teacher a config names: `teacher.pretrained`, else the run at `teacher.checkpoint`."""
    overrides = compute_settings(config)
    if config.teacher.pretrained:
        return pretrained(config.teacher.pretrained, example_inputs, place, check, overrides)
    if not config.teacher.checkpoint:
        raise DistillError(
            f"method {config.method!r} needs a teacher: set config.teacher.checkpoint to a teacher"
            " run's workdir (`jaxdistill train` trains one into WORKDIR/teacher when it is empty)"
            " or config.teacher.pretrained to a Hugging Face model")
    return run(config.teacher.checkpoint, place, example_inputs, check,
               finished=not config.teacher.allow_unfinished, overrides=overrides)
