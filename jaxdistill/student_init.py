"""Starting a student from its teacher's weights (config.student_init), checked before compiling.

`teacher_layers` copies the teacher's embeddings and the named layers (DistilBERT- and MiniLM-style
layer-dropped students); `from_teacher` starts the student as a copy of the whole teacher
(consistency distillation, DMD2), keeping the weights only the student has.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxdistill.errors import DistillError
from jaxdistill.models import pretrained


def with_teacher_layers(params, teacher_params, layers: Sequence[int]):
    """The student's params with its embeddings and layers copied from the teacher's `layers`."""
    selected = pretrained.select_layers(teacher_params["params"], tuple(layers))
    return {**params, "params": {**params["params"], **selected}}


def check_teacher_layers(student_abstract, teacher_abstract, layers: Sequence[int]) -> None:
    selected = jax.eval_shape(functools.partial(with_teacher_layers, layers=layers),
                              student_abstract, teacher_abstract)
    student_layers = [k for k in student_abstract["params"] if k.startswith("layer_")]
    if len(student_layers) != len(layers):
        raise DistillError(
            f"config.student_init.teacher_layers={tuple(layers)} names {len(layers)} layers but"
            f" the student has {len(student_layers)}; set config.student.num_layers={len(layers)}")
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(student_abstract),
                                 jax.tree.leaves(selected)):
        if want.shape != got.shape:
            raise DistillError(
                f"config.student_init.teacher_layers copies teacher weights of shape {got.shape}"
                f" into the student's {jax.tree_util.keystr(path)} of shape {want.shape}; give the"
                " student the teacher's widths or initialise it from scratch (teacher_layers=())")


def copy_of_teacher(params, teacher_params):
    """The student's params with every weight the teacher also has replaced by the teacher's;
    weights only the student has (sCM's adaptive-weighting head) keep their initialisation."""
    flat_teacher = traverse_util.flatten_dict(teacher_params)
    return traverse_util.unflatten_dict({
        path: jnp.copy(flat_teacher[path]) if path in flat_teacher else value
        for path, value in traverse_util.flatten_dict(params).items()})


def check_copy_of_teacher(student_abstract, teacher_params) -> None:
    """from_teacher needs a student that has every weight of the teacher, with its shape."""
    student_shapes = traverse_util.flatten_dict(student_abstract)
    for path, weight in traverse_util.flatten_dict(teacher_params).items():
        have = student_shapes.get(path)
        if have is None or have.shape != weight.shape:
            found = "lacks" if have is None else f"has as {have.shape}"
            raise DistillError(
                f"config.student_init.from_teacher copies the teacher's {'/'.join(path)} of"
                f" shape {weight.shape}, which the student {found};"
                " give config.student the teacher's model settings or set"
                " student_init.from_teacher=False")


def check(init_config, method: str, student_abstract: Any, teacher_params: Any) -> None:
    """Every config.student_init setting against the student and the teacher (None: none)."""
    layers = tuple(init_config.teacher_layers)
    for key, wanted in (("teacher_layers", bool(layers)),
                        ("from_teacher", init_config.from_teacher)):
        if wanted and teacher_params is None:
            raise DistillError(f"config.student_init.{key} needs a teacher, and method"
                               f" {method!r} has none; unset it")
    if init_config.from_teacher:
        check_copy_of_teacher(student_abstract, teacher_params)
    if layers:
        check_teacher_layers(student_abstract, teacher_params, layers)


def apply(init_config, params, teacher_params):
    """The student's initial params after config.student_init."""
    if init_config.teacher_layers:
        params = with_teacher_layers(params, teacher_params, init_config.teacher_layers)
    if init_config.from_teacher:
        params = copy_of_teacher(params, teacher_params)
    return params
