"""Distillation methods, registered by name: the contract between a paper's method and the engine.

A method is one module with one factory:

    @register("my_kd", settings={"loss": {"temperature": 2.0}})
    def make_loss(ctx: Context) -> LossFn | StatefulLoss: ...

`loss_fn(student_params, teacher_params, batch, rng, step) -> (loss, metrics)` is pure and
jit-friendly. The engine differentiates it in `student_params` only; `teacher_params` arrive
under `stop_gradient`. A method that carries state between steps (an EMA target, a fake-score
network, the previous epoch's params) returns a `StatefulLoss` instead. The factory runs before
anything compiles, so it is where a method checks its settings, its dataset and its teacher
(`ctx.teacher_config`), raising `DistillError` with the fix.

A loss that is a mean over counted items (an LM's tokens) reports their number as
`metrics[LOSS_WEIGHT]`, so that a step accumulated over micro-batches (`config.micro_batches`)
normalises by the count over all of them, exactly as one large batch would.

`register` declares what the method needs: a separate `teacher` model ("model"), the student's own
earlier params ("self", kept in the method's state) or none; the dataset `tasks` it trains on; and
its `settings`, config sections with defaults that `with_settings` adds to a config naming the
method (so an override of a misspelt key still lists the valid ones).

The built-in methods are every module of this package, found without a list. A method outside the
package is named in the config as `path/to/file.py:NAME` or `package.module:NAME`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import ml_collections

from jaxdistill import config as config_lib
from jaxdistill import data, user_code
from jaxdistill.data import DatasetSpec
from jaxdistill.errors import DistillError

LossFn = Callable[[Any, Any, dict, Any, Any], tuple[Any, dict]]
LOSS_WEIGHT = "loss_weight"
TEACHERS = ("model", "self", "none")


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything a method's factory may read; `build` makes it before anything compiles."""

    config: ml_collections.ConfigDict
    student: nn.Module
    teacher: nn.Module | None        # a "self" method gets the student's module here
    dataset: DatasetSpec
    teacher_config: ml_collections.ConfigDict | None = None  # the teacher run's config.json

    @functools.cached_property
    def steps_per_epoch(self) -> float:
        """Optimizer steps per pass over the training split (read when a method asks: it
        counts the split's examples)."""
        return data.steps_per_epoch(self.config.data, self.config.batch_size)


@dataclasses.dataclass(frozen=True)
class StatefulLoss:
    """A loss with state carried between steps outside the gradient (TAID's adaptive schedule).

    `loss_fn(params, teacher_params, batch, rng, step, method_state) -> (loss, metrics)`; the
    state starts as `init_state(params)` (the student's initial params) and after each step
    (number `step`, counted from 0) the engine stores
    `update_state(method_state, step, loss, metrics, params, batch)` with the updated params
    (what an EMA target network follows) and the step's batch (what DMD2's discriminator sees
    as real). `update_state` may instead return a `StateUpdate`, whose metrics (the losses of
    the auxiliary networks it trained) are logged beside the loss's own.
    """

    loss_fn: Callable[..., tuple[Any, dict]]
    init_state: Callable[[Any], Any]
    update_state: Callable[..., Any]


class StateUpdate(NamedTuple):
    """What `update_state` returns when it also reports metrics."""

    state: Any
    metrics: dict


def as_stateful(loss: LossFn | StatefulLoss) -> StatefulLoss:
    """Any method's loss in the stateful form (a stateless one carries None)."""
    if isinstance(loss, StatefulLoss):
        return loss
    return StatefulLoss(
        loss_fn=lambda params, teacher_params, batch, rng, step, _: loss(
            params, teacher_params, batch, rng, step),
        init_state=lambda params: None, update_state=lambda method_state, *_: method_state)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    make_loss: Callable[[Context], LossFn | StatefulLoss]
    teacher: str = "model"
    tasks: tuple[str, ...] = ()      # the dataset tasks it trains on; empty: any
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def needs_teacher(self) -> bool:
        """Whether a separate teacher model must be loaded (or trained first)."""
        return self.teacher == "model"

    def check_task(self, dataset: DatasetSpec) -> None:
        if self.tasks and dataset.task not in self.tasks:
            raise DistillError(
                f"method {self.name!r} trains on {' or '.join(self.tasks)} data but"
                f" config.data names a {dataset.task} dataset; choose a method for {dataset.task}"
                f" data (`jaxdistill methods` lists them) or another config.data.name")


_REGISTRY: dict[str, Method] = {}


def merge_settings(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """Nested settings merged left to right (later parts win), for methods built on a family's."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = merge_settings(merged[key], value)
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def register(name: str, *, teacher: str = "model", tasks: Sequence[str] = (),
             settings: Mapping[str, Any] | None = None) -> Callable:
    if teacher not in TEACHERS:
        raise DistillError(f"method {name!r}: teacher={teacher!r} must be one of {TEACHERS}")

    def decorator(make_loss: Callable[[Context], LossFn | StatefulLoss]) -> Callable:
        if name in _REGISTRY:
            raise DistillError(
                f"method {name!r} is registered twice ({_REGISTRY[name].make_loss.__module__} and"
                f" {make_loss.__module__}); give one of them another name")
        _REGISTRY[name] = Method(name, make_loss, teacher, tuple(tasks), settings or {})
        return make_loss
    return decorator


@functools.cache
def _load_builtins() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    _load_builtins()
    external = user_code.split(name)
    if external:
        user_code.load(external[0], "method")
        name = external[1]
    if name not in _REGISTRY:
        raise DistillError(f"unknown method {name!r}; registered methods: {', '.join(names())}")
    return _REGISTRY[name]


def _fill(node: ml_collections.ConfigDict, defaults: Mapping[str, Any]) -> None:
    with node.unlocked():
        for key, value in defaults.items():
            if isinstance(value, Mapping):
                if key not in node:
                    node[key] = ml_collections.ConfigDict()
                _fill(node[key], value)
            elif key not in node:
                node[key] = value


def with_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with every setting of its method that it lacks added at its default."""
    _fill(config, get(config.method).settings)
    return config


def base_config(method: str) -> ml_collections.ConfigDict:
    """The engine's defaults (`config.base()`) for a run of `method`, with its settings."""
    config = config_lib.base()
    config.method = method
    return with_settings(config)
