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
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax

from jaxdistill import (
    checkpoint,
    data,
    evaluate,
    loading,
    memory,
    methods,
    models,
    optim,
    sharding,
    student_init,
)
from jaxdistill import config as config_lib
from jaxdistill import state as state_lib
from jaxdistill import step as step_lib
from jaxdistill.data import text_tokenizers
from jaxdistill.errors import DistillError
from jaxdistill.models.llama import COMPUTE_FIELDS


@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    dataset: data.DatasetSpec
    mesh: jax.sharding.Mesh
    method: methods.Method
    student: nn.Module
    teacher: nn.Module | None
    teacher_params: Any
    teacher_identity: dict | None  # which run checkpoint teaches (see `checkpoint.pin_teacher`)
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule
    loss: methods.StatefulLoss
    state_shardings: Any
    _init: Any
    _initial_params: Callable[[], Any]  # a pretrained student's params, placed; else None
    _train_step: Any
    _eval_step: Any

    def init(self, rng: jax.Array | None = None) -> state_lib.DistillState:
        """A fresh state, created directly in its shardings (never materialized on one device)."""
        rng = jax.random.key(self.config.seed) if rng is None else rng
        return self._init(rng, self.teacher_params, self._initial_params())

    def abstract_state(self) -> state_lib.DistillState:
        abstract = jax.eval_shape(self._init, jax.random.key(0), self.teacher_params, None)
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
        """Bytes per device of each component, the teacher accounted separately from the
        student; given a (global) train `batch`, also the step's gradients and the activations
        its backward pass keeps for one micro-batch (see `jaxdistill.memory`), plus the
        accumulated gradients when there are several."""
        abstract = self.abstract_state()
        report = {
            "student_params": memory.bytes_per_device(abstract.params),
            "optimizer_state": memory.bytes_per_device(abstract.opt_state),
            "ema_params": memory.bytes_per_device(abstract.ema_params),
            # A method's own state: CD's EMA target, DMD2's fake score, PS-KD's snapshot.
            "method_state": memory.bytes_per_device(abstract.method_state),
            "teacher_params": memory.bytes_per_device(self.teacher_params),
        }
        if batch is not None:
            micro_batches = self.config.micro_batches
            report["gradients"] = report["student_params"]
            if micro_batches > 1:
                report["accumulated_gradients"] = report["student_params"]
            micro_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                (x.shape[0] // micro_batches, *x.shape[1:]), x.dtype), batch)
            report["activations"] = memory.activation_bytes(
                self.loss.loss_fn, abstract, self.teacher_params, micro_batch, self.mesh)
        return report

    def compiled_memory(self, state, batch) -> dict[str, int]:
        """XLA's memory analysis of the compiled train step, per device (compiles it)."""
        analysis = self._train_step.lower(state, self.teacher_params, batch).compile()
        stats = analysis.memory_analysis()
        return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
                "temporaries": stats.temp_size_in_bytes}

    def check_memory(self, report: dict[str, int]) -> None:
        """Refuses, before anything compiles, a layout whose estimate exceeds a device's memory."""
        memory.check_fits(report, memory.device_limit(self.mesh,
                                                      self.config.mesh.device_memory_gib))


def _check_batch_sizes(config, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % shards:
            raise DistillError(f"config.{key}={config[key]} must be divisible by the {shards}"
                               " batch shards (mesh data × fsdp)")
    if config.batch_size % (config.micro_batches * shards):
        raise DistillError(f"config.batch_size={config.batch_size} must be divisible by"
                           f" config.micro_batches={config.micro_batches} × the {shards} batch"
                           " shards (mesh data × fsdp), so that every micro-batch spans them")


def _check_splits(config, dataset: data.DatasetSpec) -> None:
    """The train and eval splits must exist (a TFDS slice such as 'train[:10%]' names 'train')."""
    if not dataset.split_sizes:  # TFDS's mock data record no splits
        return
    named = [("data.train_split", config.data.train_split)]
    named += [("eval_splits", split) for split in config.eval_splits]
    for key, split in named:
        if split.split("[")[0] not in dataset.split_sizes:
            raise DistillError(
                f"config.{key} names split {split!r}, which dataset {dataset.name!r} lacks;"
                f" its splits are {', '.join(sorted(dataset.split_sizes))}")


def _check_model(owner: str, model_config, dataset: data.DatasetSpec) -> None:
    """The model's output classes or vocabulary must be the dataset's."""
    for field, want in (("num_classes", dataset.num_classes), ("vocab_size", dataset.vocab_size)):
        have = model_config.get(field)
        if field == "num_classes" and dataset.task == "generation" and not have:
            continue  # an unconditional generative model of labelled data
        if want is not None and have != want:
            what = (f"predicts {have} classes" if field == "num_classes"
                    else f"has a vocabulary of {have} tokens")
            if owner == "teacher":  # a trained model: its size is not a setting
                raise DistillError(f"the teacher {what} but the dataset has {want}; distil with a"
                                   " teacher trained on this dataset (config.teacher.checkpoint"
                                   " or config.teacher.pretrained)")
            fix = "" if field == "num_classes" else (
                " (or tokenize with the model's own tokenizer, config.data.tokenizer)")
            raise DistillError(f"the {owner} {what} but the dataset has {want}; set"
                               f" config.{owner}.{field}={want}{fix}")


def _check_teacher(model_config, run_config, dataset: data.DatasetSpec) -> None:
    """Before its params are restored: the teacher's outputs and, for a teacher run on images or
    points, the inputs it was trained on must be the dataset's."""
    _check_model("teacher", model_config, dataset)
    if not run_config or not run_config.get("data") or dataset.task not in (
            "classification", "generation"):
        return  # text inputs differ in length only; their tokenizers are compared instead
    shapes = {name: shape for name, (shape, _) in data.spec(run_config.data).inputs.items()}
    ours = {name: shape for name, (shape, _) in dataset.inputs.items()}
    if shapes != ours:
        raise DistillError(
            f"the teacher was trained on {run_config.data.name} inputs {shapes} but this run's"
            f" data ({dataset.task}) has {ours}; distil on the teacher's kind of data or with a"
            " teacher trained on this dataset")


def _teacher_tokenizer(teacher: loading.Loaded):
    """The tokenizer a teacher learned with: a pretrained model's own, or its run's data's."""
    if teacher.run_config is None:
        return teacher.tokenizer
    teacher_data = teacher.run_config.get("data")
    return (data.transformers_tokenizer(teacher_data)
            if teacher_data and teacher_data.tokenizer else None)


def _check_tokenizer(config, teacher: loading.Loaded, dataset: data.DatasetSpec) -> None:
    """A text teacher must read the data's token ids as its own tokens: a tokenizer of the same
    size but another vocabulary (or other special tokens) would pass every size check and feed
    the teacher garbage."""
    theirs = _teacher_tokenizer(teacher) if dataset.task in ("lm", "sentences") else None
    if theirs is None:
        return
    found = text_tokenizers.difference(data.transformers_tokenizer(config.data), theirs,
                                       names=("in the data", "for the teacher"))
    if found is not None:
        raise DistillError(
            f"the data's tokenizer ({dataset.name}, {config.data.tokenizer}) is not the"
            f" teacher's: {found};"
            " tokenize the data with the teacher's tokenizer (config.data.tokenizer, and the"
            " teacher's config.data.name for a trained bpe tokenizer)")


def _load_teacher(config, mesh, dataset, teacher_to_train) -> loading.Loaded:
    """The teacher module and its frozen params, placed straight into the teacher layout (or
    only their shapes, for a teacher that has yet to train)."""
    def place(boxed):
        return sharding.param_shardings(boxed, mesh, config.sharding.teacher, "teacher")

    def check(model_config, run_config):
        _check_teacher(model_config, run_config, dataset)

    teacher = (loading.teacher(config, dataset.example_inputs(), place, check)
               if teacher_to_train is None
               else loading.planned(teacher_to_train, place, dataset.example_inputs(), check,
                                    loading.compute_settings(config)))
    _check_tokenizer(config, teacher, dataset)
    return teacher


def _student_from_a_model(config: ml_collections.ConfigDict) -> None:
    """With config.student_init.pretrained (a Hugging Face model) or .checkpoint (an earlier
    run, e.g. SFT before distilling), the student is that model: config.student takes its
    settings, keeping only the compute settings (dtype, dropout, attention, remat) it gives."""
    init = config.student_init
    sources = [key for key in ("pretrained", "checkpoint", "teacher_layers", "from_teacher")
               if init.get(key)]
    if not set(sources) & {"pretrained", "checkpoint"}:
        return
    if len(sources) > 1:
        raise DistillError(f"config.student_init sets {' and '.join(sources)}, which would"
                           " overwrite each other's weights; set only one of them")
    model_config = (models.pretrained.model_config(init.pretrained) if init.pretrained
                    else checkpoint.read_config(init.checkpoint).student.to_dict())
    kept = {key: config.student[key] for key in COMPUTE_FIELDS if key in config.student}
    config.student = ml_collections.ConfigDict({**model_config, **kept})


PRECISIONS = ("float32", "bfloat16")


def _apply_precision(config: ml_collections.ConfigDict) -> None:
    """config.precision="bfloat16" sets the student's compute dtype (the teacher's is set where
    it loads, `loading.compute_settings`)."""
    if config.precision not in PRECISIONS:
        raise DistillError(f"config.precision={config.precision!r} is not one of"
                           f" {', '.join(PRECISIONS)}")
    if config.precision == "float32":
        return
    model = models.MODELS.get(config.student.get("model"))
    if model is None or "dtype" not in {field.name for field in dataclasses.fields(model)}:
        raise DistillError(f"config.precision={config.precision} sets a model's compute dtype,"
                           f" which the {config.student.get('model')!r} student does not have;"
                           " use precision float32 (or a llama student)")
    config.student.dtype = config.precision


def _check_without_teacher(config: ml_collections.ConfigDict, devices):
    """The checks of `config` that need no teacher: settings, method, dataset, student, mesh."""
    config_lib.validate(config)
    _student_from_a_model(config)
    _apply_precision(config)
    method = methods.get(config.method)
    methods.with_settings(config)
    dataset = data.spec(config.data)
    _check_splits(config, dataset)
    method.check_task(dataset)
    _check_model("student", config.student, dataset)
    mesh = sharding.make_mesh(config.mesh, devices)
    _check_batch_sizes(config, mesh)
    return method, dataset, mesh


def build(config: ml_collections.ConfigDict, *,
          devices: Sequence[jax.Device] | None = None,
          teacher_to_train: ml_collections.ConfigDict | None = None) -> Run:
    """The run of `config`, which gains its method's settings at their defaults where unset.

    `teacher_to_train` is the config of a teacher run that has not trained yet: the run is then
    built against that teacher's abstract params, which checks everything about the student
    before the teacher trains and gives the memory estimate, but cannot init or train."""
    method, dataset, mesh = _check_without_teacher(config, devices)
    example_inputs = dataset.example_inputs()

    student = models.build(config.student)
    loaded = (_load_teacher(config, mesh, dataset, teacher_to_train)
              if method.needs_teacher else None)
    teacher, teacher_params, teacher_shardings, teacher_config = (
        (loaded.module, loaded.params, loaded.shardings, loaded.run_config) if loaded
        else (None, None, None, None))
    optimizer, lr_schedule = optim.build(config.optimizer, config.total_steps)
    context = methods.Context(
        config=config, student=student,
        teacher=student if method.teacher == "self" else teacher, dataset=dataset,
        teacher_config=teacher_config)
    loss = methods.as_stateful(method.make_loss(context))

    def init_state(rng, teacher_params, initial_params=None, boxed=False):
        params_rng, state_rng = jax.random.split(rng)
        params = (student.init(params_rng, *example_inputs, train=False)
                  if initial_params is None else initial_params)
        if not boxed:
            params = student_init.apply(config.student_init, nn.unbox(params), teacher_params)
        # Boxed (logically annotated) params make optax's states carry the same annotations.
        return state_lib.create(params, optimizer, state_rng, ema=config.ema_decay > 0,
                                method_state=loss.init_state(params))

    if config.student_init.teacher_layers or config.student_init.from_teacher:
        student_init.check(config.student_init, config.method, jax.eval_shape(lambda: nn.unbox(
            student.init(jax.random.key(0), *example_inputs, train=False))), teacher_params)
    boxed_state = jax.eval_shape(functools.partial(init_state, boxed=True), jax.random.key(0),
                                 teacher_params)
    state_shardings = sharding.param_shardings(boxed_state, mesh, config.sharding.student,
                                               "student")

    def initial_params():
        """config.student_init's pretrained model's or earlier run's weights, placed straight
        into the student layout."""
        def place(boxed):
            return sharding.param_shardings(boxed, mesh, config.sharding.student, "student")

        if config.student_init.pretrained:
            return loading.pretrained(config.student_init.pretrained, example_inputs, place).params
        if config.student_init.checkpoint:
            return loading.run(config.student_init.checkpoint, place, example_inputs).params
        return None
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)

    train_step = jax.jit(
        step_lib.make_train_step(loss, optimizer, lr_schedule, config.ema_decay,
                                 config.micro_batches),
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
        config=config, dataset=dataset, mesh=mesh, method=method, student=student,
        teacher=teacher, teacher_params=teacher_params,
        teacher_identity=None if loaded is None else loaded.identity, optimizer=optimizer,
        lr_schedule=lr_schedule, loss=loss, state_shardings=state_shardings,
        _init=jax.jit(init_state, in_shardings=(None, teacher_shardings, None),
                      out_shardings=state_shardings),
        _initial_params=initial_params,
        _train_step=train_step, _eval_step=eval_step,
    )
