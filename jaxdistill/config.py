"""Loading configs: `configs/NAME.py[:ARG]` files or `NAME[:ARG]` configs shipped with jaxdistill.

Every config starts from `base()`, the engine's settings, plus the settings its method declares
(`methods.base_config`), so an override of an unknown key fails with the list of valid ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import types

import ml_collections
import numpy as np

from jaxdistill.errors import DistillError

SCALES = ("smoke", "local", "paper")


def base() -> ml_collections.ConfigDict:
    """Defaults shared by every config; paper configs override what their setting needs."""
    c = ml_collections.ConfigDict()
    c.method = ""  # a registered name, set with its settings by `methods.base_config`
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 128
    # Gradient accumulation: one optimizer step over batch_size examples, computed in this many
    # slices of batch_size / micro_batches (the activations of one slice live at a time).
    c.micro_batches = 1
    c.log_every = 50
    c.eval_every = 500
    c.eval_batch_size = 512
    c.eval_splits = ("validation", "test")
    c.ema_decay = 0.0
    # "bfloat16": the student and the teacher compute in bfloat16 and the teacher's params are
    # stored in it; the student's params, optimizer state, losses and softmax statistics stay
    # float32. Models with a compute dtype (llama) only.
    c.precision = "float32"
    # Text datasets: tokenizer is a pretrained model's name or directory, or "byte" / "bpe:N"
    # (trained on the train split) for language modelling; format is "sentences", "packed"
    # (documents packed into rows of max_length) or "prompts" (prompt_length tokens of prompt,
    # continuation_length of continuation); empty picks the dataset's natural one.
    # teacher_cache: a `jaxdistill cache-teacher` directory of offline top-k teacher targets.
    # Data from files (instead of the TFDS dataset `name`): files / validation_files are paths,
    # globs or comma-separated lists of JSONL, Parquet or text files, or a directory that
    # Hugging Face `datasets` saved; file_reader says how to read them ("" from the extension;
    # "text" a document per file, "text_lines" a document per line); without validation_files
    # a seeded validation_fraction of the examples is held out. kind is "text",
    # "prompt_completion" or "messages" ("" from the columns found), read from the `columns`
    # named; too_long is "truncate" or "drop" for an example longer than its row.
    c.data = ml_collections.ConfigDict(
        {"name": "sklearn_digits", "data_dir": "", "train_split": "train", "cache": True,
         "tokenizer": "", "max_length": 64, "format": "", "prompt_length": 64,
         "continuation_length": 64, "teacher_cache": "", "task": "",
         "files": "", "validation_files": "", "validation_fraction": 0.0, "file_reader": "",
         "kind": "", "too_long": "truncate",
         "columns": {"text": "text", "prompt": "prompt", "completion": "completion",
                     "messages": "messages"}})
    c.student = ml_collections.ConfigDict({"model": "mlp", "num_classes": 10})
    # The teacher: a jaxdistill run's workdir (checkpoint), the config that trains one when that
    # is empty, or a Hugging Face model (pretrained: a directory or a known name).
    # allow_unfinished: distil from a teacher run that has not trained all its steps. dtype and
    # attention, when set, change how the teacher computes (e.g. "bfloat16", "flash"), not its
    # weights; empty keeps its own settings.
    c.teacher = ml_collections.ConfigDict({"checkpoint": "", "config": "", "pretrained": "",
                                           "allow_unfinished": False, "dtype": "",
                                           "attention": ""})
    # teacher_layers: copy the teacher's embeddings and these layers into the student (DistilBERT
    # and MiniLM students, depth-pruned LMs), e.g. (0, 2, 5); empty initialises the student from
    # scratch. from_teacher starts the student as a copy of the whole teacher (consistency
    # distillation, DMD2: same architecture). pretrained: a Hugging Face directory (or known
    # name) whose model and weights the student starts from; checkpoint: an earlier run's
    # workdir whose student (its newest checkpoint) it starts from, e.g. SFT before distilling
    # (with either, config.student keeps only its compute settings: dtype, dropout, ...).
    c.student_init = ml_collections.ConfigDict({"teacher_layers": (), "from_teacher": False,
                                                "pretrained": "", "checkpoint": ""})
    # The method's own settings (loss weights, temperatures, schedules) are declared by the
    # method and added by `methods.with_settings`; this section starts empty.
    c.loss = ml_collections.ConfigDict()
    c.optimizer = ml_collections.ConfigDict({
        "name": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 0, "b1": 0.9,
        "b2": 0.999, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False,
        "grad_clip_norm": 0.0})
    # device_memory_gib: what one device holds; 0 asks the device (accelerators report it).
    c.mesh = ml_collections.ConfigDict(
        {"data": -1, "fsdp": 1, "tensor": 1, "device_memory_gib": 0.0})
    # Logical parameter axis -> mesh axes. The teacher is inference-only, so it may use another
    # layout (e.g. fully sharded) than the student.
    rules = (("embed", "fsdp"), ("mlp", "tensor"), ("mlp_in", "fsdp"), ("classes", None),
             ("conv_in", "fsdp"), ("conv_out", "tensor"), ("vocab", "tensor"),
             ("heads", "tensor"), ("kv", None), ("position", None), ("token_type", None),
             ("norm", None), ("projection", "tensor"))
    c.sharding = ml_collections.ConfigDict({"student": rules, "teacher": rules})
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 500, "keep": 3, "async_save": True})
    return c


def resolve(spec: str) -> str:
    """`NAME[:ARG]` (a config shipped in jaxdistill.configs) or `path/NAME.py[:ARG]` ->
    `path.py[:ARG]`."""
    name, colon, arg = spec.partition(":")
    if not name.endswith(".py"):
        if name not in available():
            raise DistillError(f"unknown config {name!r}; available: {', '.join(available())}")
        name = os.path.join(configs_dir(), name + ".py")
    elif not os.path.exists(name):
        raise DistillError(f"config file {name} does not exist")
    return name + colon + arg


def load(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of `spec` (see `resolve`), from its module's `get_config(ARG)`."""
    path, _, arg = resolve(spec).partition(":")
    try:
        module = _config_module(path)
        if not callable(getattr(module, "get_config", None)):
            raise DistillError(f"config file {path} defines no get_config(arg); a config file"
                               " returns its ConfigDict from get_config")
        return module.get_config(arg or None)
    except DistillError:
        raise
    except Exception as e:  # the file is the user's code: report its error on one line
        raise DistillError(f"config file {path} does not load: {type(e).__name__}: {e}") from None


def _config_module(path: str) -> types.ModuleType:
    """Executes a config file as a module of a package made for its own directory, so that its
    relative imports (`from . import common`) read its siblings there, never an installed copy."""
    directory = os.path.dirname(os.path.abspath(path))
    package = "jaxdistill_config_dir_" + hashlib.sha1(directory.encode()).hexdigest()[:12]
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [directory]
        sys.modules[package] = module
    name = os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(f"{package}.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configs_dir() -> str:
    """The directory of the configs that ship with jaxdistill (found without importing them)."""
    return importlib.util.find_spec("jaxdistill.configs").submodule_search_locations[0]


def available() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(configs_dir())
                  if f.endswith(".py") and not f.startswith("_") and f != "common.py")


def parse_arg(arg: str | None, *defaults: str) -> tuple[str, ...]:
    """A config's `SCALE[,A[,B...]]` argument: the scale (checked, `local` when absent) and one
    value per default, each taking its default when left out."""
    scale, *rest = (arg or "local").split(",")
    if len(rest) > len(defaults):
        raise DistillError(f"config arg {arg!r} has {len(rest)} values after the scale; this"
                           f" config takes at most {len(defaults)}")
    rest += [""] * (len(defaults) - len(rest))
    return (scale_of(scale), *(value or default for value, default in zip(rest, defaults)))


def scale_of(arg: str | None) -> str:
    scale = arg or "local"
    if scale not in SCALES:
        raise DistillError(f"unknown config variant {scale!r}; choose one of {', '.join(SCALES)}")
    return scale


# Run settings that count or space out steps and examples: zero or less stalls, divides by zero
# or (checkpoint.keep) silently keeps no checkpoint.
_POSITIVE = ("total_steps", "batch_size", "micro_batches", "eval_batch_size", "log_every",
             "eval_every", "checkpoint.every_steps", "checkpoint.keep")


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, before anything is built, run settings that cannot work."""
    for key in _POSITIVE:
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DistillError(f"config.{key}={value!r} must be a positive integer")
    lr = config.optimizer.lr
    if not (isinstance(lr, (int, float)) and 0 <= lr <= float(np.finfo(np.float32).max)):
        raise DistillError(f"config.optimizer.lr={lr!r} must be a finite number >= 0 (in float32);"
                           " set it to a learning rate such as 1e-3")


def _get(config: ml_collections.ConfigDict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Fails with the valid keys when `config.<dotted>` does not exist."""
    node, seen = config, "config"
    for key in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            valid = (", ".join(sorted(node)) if isinstance(node, ml_collections.ConfigDict)
                     else "none")
            raise DistillError(f"unknown config key config.{dotted}; valid keys of {seen}: {valid}")
        node, seen = node[key], f"{seen}.{key}"


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))
