"""Distillation methods, registered by name.

A method is a factory `make_loss(config, student, teacher) -> loss_fn`, where
`loss_fn(student_params, teacher_params, batch, rng, step) -> (loss, metrics)` is pure and
jit-friendly. The engine differentiates it in `student_params` only; `teacher_params` arrive
under `stop_gradient`. A method that carries state between steps returns a `StatefulLoss`
instead. Adding a paper's method is one module here plus one config.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import flax.linen as nn
import ml_collections

from jaxdistill.errors import DistillError

LossFn = Callable[[Any, Any, dict, Any, Any], tuple[Any, dict]]
LossFactory = Callable[[ml_collections.ConfigDict, nn.Module, "nn.Module | None"],
                       "LossFn | StatefulLoss"]


@dataclasses.dataclass(frozen=True)
class StatefulLoss:
    """A loss with state carried between steps outside the gradient (TAID's adaptive schedule).

    `loss_fn(params, teacher_params, batch, rng, step, method_state) -> (loss, metrics)`; the
    state starts as `init_state(params)` (the student's initial params) and after each step
    (number `step`, counted from 0) the engine stores
    `update_state(method_state, step, loss, metrics, params, batch)` with the updated params
    (what an EMA target network follows) and the step's batch (what DMD2's discriminator sees
    as real).
    """

    loss_fn: Callable[..., tuple[Any, dict]]
    init_state: Callable[[Any], Any]
    update_state: Callable[[Any, Any, Any, dict, Any, dict], Any]


def as_stateful(loss: "LossFn | StatefulLoss") -> StatefulLoss:
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
    make_loss: LossFactory
    needs_teacher: bool
    # Self-distillation: the teacher is the student itself at the end of the previous epoch
    # (its params kept in the state), not a separate model.
    self_teacher: bool = False


_REGISTRY: dict[str, Method] = {}
_BUILTIN_MODULES = ("supervised", "kd", "features", "minilm", "born_again", "pskd", "sft",
                    "logit_kd", "cached_kd", "seqkd", "gkd", "distillspec", "taid", "adaspec",
                    "diffusion", "cd", "ict", "scm", "meanflow", "dmd2")


def register(name: str, *, needs_teacher: bool = True,
             self_teacher: bool = False) -> Callable[[LossFactory], LossFactory]:
    def decorator(make_loss: LossFactory) -> LossFactory:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = Method(name, make_loss, needs_teacher and not self_teacher, self_teacher)
        return make_loss
    return decorator


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"jaxdistill.methods.{module}")


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    _load_builtins()
    if name not in _REGISTRY:
        raise DistillError(f"unknown method {name!r}; registered methods: {', '.join(names())}")
    return _REGISTRY[name]
