"""`build(config) -> Run`: mesh, models, method, optimizer, shardings and the jitted steps.

    run = build(config)
    state = run.init()
    state, metrics = run.train_step(state, run.shard_batch(batch))
    sums = run.eval_step(state, run.shard_batch(eval_batch))

Everything a config gets wrong (method, model, class counts or vocabulary, mesh, batch size,
teacher path, layers to copy from the teacher) is reported here, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
from flax import traverse_util
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
    dataset: data.DatasetSpec
    mesh: jax.sharding.Mesh
    method: methods.Method
    student: nn.Module
    teacher: nn.Module | None
    teacher_params: Any
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule
    loss: methods.StatefulLoss
    state_shardings: Any
    _init: Any
    _train_step: Any
    _eval_step: Any

    def init(self, rng: jax.Array | None = None) -> state_lib.DistillState:
        """A fresh state, created directly in its shardings (never materialized on one device)."""
        rng = jax.random.key(self.config.seed) if rng is None else rng
        return self._init(rng, self.teacher_params)

    def abstract_state(self) -> state_lib.DistillState:
        abstract = jax.eval_shape(self._init, jax.random.key(0), self.teacher_params)
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

    def memory_report(self, batch: dict | None = None) -> dict[str, int]:
        """Bytes per device of each component, teacher accounted separately from the student.

        Given a (global) train `batch`, adds the step's transient memory, estimated by tracing
        (nothing compiles): the gradients, and the activations its backward pass keeps (the
        residuals of the loss's VJP that carry the batch axis, split over the batch shards).
        Tensor parallelism also splits some activations, which this does not see: with
        mesh.tensor > 1 the activation estimate is an upper bound.
        """
        abstract = self.abstract_state()
        report = {
            "student_params": _bytes_per_device(abstract.params),
            "optimizer_state": _bytes_per_device(abstract.opt_state),
            "ema_params": _bytes_per_device(abstract.ema_params),
            "snapshot_params": _bytes_per_device(abstract.snapshot_params),
            # A method's own state: CD's EMA target, DMD2's fake score and its optimizer.
            "method_state": _bytes_per_device(abstract.method_state),
            "teacher_params": _bytes_per_device(self.teacher_params),
        }
        if batch is not None:
            report["gradients"] = report["student_params"]
            report["activations"] = self._activation_bytes(abstract, batch)
        return report

    def _activation_bytes(self, abstract, batch: dict) -> int:
        def residuals(params, teacher_params, batch, method_state):
            def loss(p):
                return self.loss.loss_fn(p, teacher_params, batch, jax.random.key(0), 0,
                                         method_state)[0]
            return jax.vjp(loss, params)[1]

        teacher_params = step_lib.teaching_params(abstract, self.teacher_params)
        leaves = jax.tree.leaves(jax.eval_shape(residuals, abstract.params, teacher_params, batch,
                                                abstract.method_state))
        global_batch = len(jax.tree.leaves(batch)[0])
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        return sum(math.prod(x.shape) * x.dtype.itemsize // shards
                   for x in leaves if x.ndim and x.shape[0] == global_batch)

    def compiled_memory(self, state, batch) -> dict[str, int]:
        """XLA's memory analysis of the compiled train step, per device (compiles it)."""
        analysis = self._train_step.lower(state, self.teacher_params, batch).compile()
        stats = analysis.memory_analysis()
        return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
                "temporaries": stats.temp_size_in_bytes}

    def check_memory(self, report: dict[str, int]) -> None:
        """Refuses, before anything compiles, a layout whose estimate exceeds a device's memory."""
        limit = _device_memory_bytes(self.mesh, self.config.mesh.device_memory_gib)
        total = sum(report.values())
        if limit is None or total <= limit:
            return
        raise DistillError(
            f"this layout needs about {format_bytes(total)} per device"
            f" ({format_memory(report)}) but a device has {format_bytes(limit)}; shard the student"
            " over more devices (config.mesh.fsdp, config.mesh.tensor), shard the teacher too"
            " (config.sharding.teacher), or lower config.batch_size")


def format_bytes(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"


def format_memory(report: dict[str, int]) -> str:
    return ", ".join(f"{name} {format_bytes(size)}" for name, size in report.items() if size)


def _device_memory_bytes(mesh, configured_gib: float) -> int | None:
    """config.mesh.device_memory_gib when set, else what the device reports (CPUs report none)."""
    if configured_gib:
        return int(configured_gib * 2**30)
    local = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    stats = local.memory_stats() or {}
    return stats.get("bytes_limit")


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


def _check_model(owner: str, model_config, dataset: data.DatasetSpec) -> None:
    """The model's output classes or vocabulary must be the dataset's."""
    for field, want in (("num_classes", dataset.num_classes), ("vocab_size", dataset.vocab_size)):
        have = model_config.get(field)
        if field == "num_classes" and dataset.task == "generation" and not have:
            continue  # an unconditional generative model of labelled data
        if want is not None and have != want:
            what = (f"predicts {have} classes" if field == "num_classes"
                    else f"has a vocabulary of {have} tokens")
            fix = "" if field == "num_classes" else (
                " (or tokenize with the model's own tokenizer, config.data.tokenizer)")
            raise DistillError(f"the {owner} {what} but the dataset has {want}; set"
                               f" config.{owner}.{field}={want}{fix}")


def _teacher_module(config):
    """The teacher's module, its model config, and its params as stored (or None to restore)."""
    if config.teacher.pretrained:
        loaded = models.from_pretrained(config.teacher.pretrained)
        return loaded.module, ml_collections.ConfigDict(loaded.model_config), loaded.params
    if not config.teacher.checkpoint:
        raise DistillError(
            f"method {config.method!r} needs a teacher: set config.teacher.checkpoint to a teacher"
            " run's workdir (`jaxdistill train` trains one into WORKDIR/teacher when it is empty)"
            " or config.teacher.pretrained to a Hugging Face model")
    model_config = checkpoint.read_config(config.teacher.checkpoint).student
    return models.build(model_config), model_config, None


# What a diffusion teacher's outputs mean: a student reading them under other settings would
# silently get garbage velocities.
_DIFFUSION_KEYS = ("parameterization", "sigma_data", "sigma_min", "sigma_max", "time_scale")


def _check_teacher_diffusion(config) -> None:
    """A generative teacher must share the student's parameterization and time embedding."""
    if config.data.get("task") != "generation" or not config.teacher.checkpoint:
        return
    teacher = checkpoint.read_config(config.teacher.checkpoint).get("diffusion")
    if teacher is None:
        return
    for key in _DIFFUSION_KEYS:
        if teacher.get(key) != config.diffusion[key]:
            raise DistillError(
                f"the teacher at {config.teacher.checkpoint} was trained with diffusion.{key}="
                f"{teacher.get(key)!r} but this run sets {config.diffusion[key]!r}; set"
                f" config.diffusion.{key}={teacher.get(key)!r} (or train a teacher with it)")


def _load_teacher(config, mesh, dataset):
    """The teacher module and its frozen params, placed straight into the teacher layout."""
    teacher, model_config, params = _teacher_module(config)
    _check_model("teacher", model_config, dataset)
    _check_teacher_diffusion(config)
    boxed = jax.eval_shape(functools.partial(teacher.init, train=False),
                           jax.random.key(0), *dataset.example_inputs())
    shardings = sharding.param_shardings(boxed, mesh, config.sharding.teacher, "teacher")
    if params is None:
        params = checkpoint.load_params(config.teacher.checkpoint,
                                        _with_shardings(nn.unbox(boxed), shardings))
    else:
        params = jax.device_put({"params": params}, shardings)
    return teacher, params, shardings


def _init_from_teacher(params, teacher_params, layers: Sequence[int]):
    """The student's params with its embeddings and layers copied from the teacher's `layers`."""
    selected = models.pretrained.select_layers(teacher_params["params"], tuple(layers))
    return {**params, "params": {**params["params"], **selected}}


def _check_init_from_teacher(student_abstract, teacher_abstract, layers) -> None:
    selected = jax.eval_shape(functools.partial(_init_from_teacher, layers=layers),
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


def _copy_teacher(params, teacher_params):
    """The student's params with every weight the teacher also has replaced by the teacher's;
    weights only the student has (sCM's adaptive-weighting head) keep their initialisation."""
    flat_teacher = traverse_util.flatten_dict(teacher_params)
    return traverse_util.unflatten_dict({
        path: jnp.copy(flat_teacher[path]) if path in flat_teacher else value
        for path, value in traverse_util.flatten_dict(params).items()})


def _check_copy_teacher(config, teacher, student_abstract, teacher_params) -> None:
    """config.student_init.from_teacher needs a teacher whose every weight the student has,
    with the same shape."""
    if teacher is None:
        raise DistillError(f"config.student_init.from_teacher needs a teacher, and method"
                           f" {config.method!r} has none; set it to False")
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


def build(config: ml_collections.ConfigDict, *,
          devices: Sequence[jax.Device] | None = None) -> Run:
    method = methods.get(config.method)
    dataset = data.spec(config.data)
    _check_model("student", config.student, dataset)
    mesh = sharding.make_mesh(config.mesh, devices)
    _check_batch_sizes(config, mesh)
    example_inputs = dataset.example_inputs()

    student = models.build(config.student)
    teacher, teacher_params, teacher_shardings = (
        _load_teacher(config, mesh, dataset) if method.needs_teacher else (None, None, None))
    optimizer, lr_schedule = optim.build(config.optimizer, config.total_steps)
    loss = methods.as_stateful(
        method.make_loss(config, student, student if method.self_teacher else teacher))
    teacher_layers = tuple(config.student_init.teacher_layers)

    def init_state(rng, teacher_params, boxed=False):
        params_rng, state_rng = jax.random.split(rng)
        params = student.init(params_rng, *example_inputs, train=False)
        if not boxed:
            params = nn.unbox(params)
            if teacher_layers:
                params = _init_from_teacher(params, teacher_params, teacher_layers)
            if config.student_init.from_teacher:
                params = _copy_teacher(params, teacher_params)
        # Boxed (logically annotated) params make optax's states carry the same annotations.
        return state_lib.create(params, optimizer, state_rng, ema=config.ema_decay > 0,
                                snapshot=method.self_teacher,
                                method_state=loss.init_state(params))

    if teacher_layers and teacher is None:
        raise DistillError(f"config.student_init.teacher_layers needs a teacher, and method"
                           f" {config.method!r} has none; set teacher_layers=()")
    if teacher_layers or config.student_init.from_teacher:
        student_abstract = jax.eval_shape(lambda: nn.unbox(
            student.init(jax.random.key(0), *example_inputs, train=False)))
    if config.student_init.from_teacher:
        _check_copy_teacher(config, teacher, student_abstract, teacher_params)
    if teacher_layers:
        _check_init_from_teacher(student_abstract, teacher_params, teacher_layers)
    boxed_state = jax.eval_shape(functools.partial(init_state, boxed=True), jax.random.key(0),
                                 teacher_params)
    state_shardings = sharding.param_shardings(boxed_state, mesh, config.sharding.student,
                                               "student")
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)

    train_step = jax.jit(
        step_lib.make_train_step(loss, optimizer, lr_schedule, config.ema_decay,
                                 data.steps_per_epoch(config.data, config.batch_size)
                                 if method.self_teacher else None),
        in_shardings=(state_shardings, teacher_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        evaluate.make_eval_step(dataset, student, teacher, config),
        in_shardings=(state_shardings.params, teacher_shardings, batch_sharding),
        out_shardings=replicated,
    )
    return Run(
        config=config, dataset=dataset, mesh=mesh, method=method, student=student, teacher=teacher,
        teacher_params=teacher_params, optimizer=optimizer, lr_schedule=lr_schedule,
        loss=loss, state_shardings=state_shardings,
        _init=jax.jit(init_state, in_shardings=(None, teacher_shardings),
                      out_shardings=state_shardings),
        _train_step=train_step, _eval_step=eval_step,
    )
