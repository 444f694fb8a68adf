"""`build(config) -> Run`: mesh, models, method, optimizer, shardings and the jitted steps.

    run = build(config)
    state = run.init()
    state, metrics = run.train_step(state, run.shard_batch(batch))
    sums = run.eval_step(state, run.shard_batch(eval_batch))

Everything a config gets wrong (method, model, class counts, mesh, batch size, teacher path) is
reported here, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdistill import checkpoint, data, evaluate, methods, models, optim, sharding, state as state_lib
from jaxdistill import step as step_lib
from jaxdistill.errors import DistillError


@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    method: methods.Method
    student: nn.Module
    teacher: nn.Module | None
    teacher_params: Any
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule
    state_shardings: Any
    _init: Any
    _train_step: Any
    _eval_step: Any

    def init(self, rng: jax.Array | None = None) -> state_lib.DistillState:
        """A fresh state, created directly in its shardings (never materialized on one device)."""
        return self._init(jax.random.key(self.config.seed) if rng is None else rng)

    def abstract_state(self) -> state_lib.DistillState:
        abstract = jax.eval_shape(self._init, jax.random.key(0))
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.state_shardings)

    def train_step(self, state, batch):
        """One optimizer step; `state` is donated, so use only the returned one afterwards."""
        return self._train_step(state, self.teacher_params, batch)

    def eval_step(self, state, batch) -> dict:
        """Per-batch sums (see `evaluate.summarize`) with the EMA params when the run keeps them."""
        params = state.params if state.ema_params is None else state.ema_params
        return self._eval_step(params, self.teacher_params, batch)

    def shard_batch(self, local_batch: dict) -> dict:
        return sharding.shard_batch(local_batch, self.mesh)

    def memory_report(self) -> dict[str, int]:
        """Bytes per device of each component, teacher accounted separately from the student."""
        abstract = self.abstract_state()
        report = {
            "student_params": _bytes_per_device(abstract.params),
            "optimizer_state": _bytes_per_device(abstract.opt_state),
            "ema_params": _bytes_per_device(abstract.ema_params),
            "teacher_params": _bytes_per_device(self.teacher_params),
        }
        return report


def _bytes_per_device(tree) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def _check_batch_sizes(config, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % shards:
            raise DistillError(f"config.{key}={config[key]} must be divisible by the {shards}"
                               " batch shards (mesh data × fsdp)")


def _check_classes(owner: str, model_config, num_classes: int) -> None:
    if model_config.num_classes != num_classes:
        raise DistillError(
            f"the {owner} predicts {model_config.num_classes} classes but the dataset has"
            f" {num_classes}; set config.{owner}.num_classes={num_classes}")


def _load_teacher(config, mesh, example_images, num_classes):
    """The teacher module and its frozen params, restored straight into the teacher layout."""
    if not config.teacher.checkpoint:
        raise DistillError(
            f"method {config.method!r} needs a teacher: set config.teacher.checkpoint to a teacher"
            " run's workdir (`jaxdistill train` trains one into WORKDIR/teacher when it is empty)")
    teacher_config = checkpoint.read_config(config.teacher.checkpoint)
    _check_classes("teacher", teacher_config.student, num_classes)
    teacher = models.build(teacher_config.student)
    boxed = jax.eval_shape(functools.partial(teacher.init, train=False),
                           jax.random.key(0), example_images)
    shardings = sharding.param_shardings(boxed, mesh, config.sharding.teacher, "teacher")
    abstract = _with_shardings(nn.unbox(boxed), shardings)
    params = checkpoint.load_params(config.teacher.checkpoint, abstract)
    return teacher, params, shardings


def build(config: ml_collections.ConfigDict, *,
          devices: Sequence[jax.Device] | None = None) -> Run:
    method = methods.get(config.method)
    dataset = data.spec(config.data)
    _check_classes("student", config.student, dataset.num_classes)
    mesh = sharding.make_mesh(config.mesh, devices)
    _check_batch_sizes(config, mesh)
    example_images = jnp.zeros((1, *dataset.image_shape), jnp.float32)

    student = models.build(config.student)
    teacher, teacher_params, teacher_shardings = (
        _load_teacher(config, mesh, example_images, dataset.num_classes)
        if method.needs_teacher else (None, None, None))
    optimizer, lr_schedule = optim.build(config.optimizer, config.total_steps)
    loss_fn = method.make_loss(config, student, teacher)

    def init_state(rng, boxed=False):
        params_rng, state_rng = jax.random.split(rng)
        params = student.init(params_rng, example_images, train=False)
        # Boxed (logically annotated) params make optax's states carry the same annotations.
        return state_lib.create(params if boxed else nn.unbox(params), optimizer, state_rng,
                                ema=config.ema_decay > 0)

    boxed_state = jax.eval_shape(functools.partial(init_state, boxed=True), jax.random.key(0))
    state_shardings = sharding.param_shardings(boxed_state, mesh, config.sharding.student, "student")
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)

    train_step = jax.jit(
        step_lib.make_train_step(loss_fn, optimizer, lr_schedule, config.ema_decay),
        in_shardings=(state_shardings, teacher_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        evaluate.make_eval_step(student, teacher),
        in_shardings=(state_shardings.params, teacher_shardings, batch_sharding),
        out_shardings=replicated,
    )
    return Run(
        config=config, mesh=mesh, method=method, student=student, teacher=teacher,
        teacher_params=teacher_params, optimizer=optimizer, lr_schedule=lr_schedule,
        state_shardings=state_shardings,
        _init=jax.jit(init_state, out_shardings=state_shardings),
        _train_step=train_step, _eval_step=eval_step,
    )
