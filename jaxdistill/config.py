"""Loading configs: `configs/NAME.py[:ARG]` files or `NAME[:ARG]` modules of `jaxdistill.configs`.

Every config starts from `base()`, so each key below exists in every run and an override of an
unknown key fails with the list of valid ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import ml_collections

from jaxdistill.errors import DistillError

SCALES = ("smoke", "local", "paper")


def base() -> ml_collections.ConfigDict:
    """Defaults shared by every config; paper configs override what their setting needs."""
    c = ml_collections.ConfigDict()
    c.method = "supervised"
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 128
    c.log_every = 50
    c.eval_every = 500
    c.eval_batch_size = 512
    c.eval_splits = ("validation", "test")
    c.ema_decay = 0.0
    # Text datasets: tokenizer is a pretrained model's name or directory, or "byte" / "bpe:N"
    # (trained on the train split) for language modelling; format is "sentences", "packed"
    # (documents packed into rows of max_length) or "prompts" (prompt_length tokens of prompt,
    # continuation_length of continuation); empty picks the dataset's natural one.
    # teacher_cache: a `jaxdistill cache-teacher` directory of offline top-k teacher targets.
    c.data = ml_collections.ConfigDict(
        {"name": "sklearn_digits", "data_dir": "", "train_split": "train", "cache": True,
         "tokenizer": "", "max_length": 64, "format": "", "prompt_length": 64,
         "continuation_length": 64, "teacher_cache": "", "task": ""})
    c.student = ml_collections.ConfigDict({"model": "mlp", "num_classes": 10})
    # The teacher: a jaxdistill run's workdir (checkpoint), the config that trains one when that
    # is empty, or a Hugging Face model (pretrained: a directory or a known name).
    c.teacher = ml_collections.ConfigDict({"checkpoint": "", "config": "", "pretrained": ""})
    # teacher_layers: copy the teacher's embeddings and these layers into the student (DistilBERT
    # and MiniLM students), e.g. (0, 2, 5); empty initialises the student from scratch.
    # from_teacher starts the student as a copy of the whole teacher (consistency distillation,
    # DMD2: same architecture).
    c.student_init = ml_collections.ConfigDict({"teacher_layers": (), "from_teacher": False})
    # LM distillation: divergence (fkl, rkl, jsd, tvd, skl, srkl) with beta (jsd) and skew (α of
    # skl/srkl); fused uses the fused linear-divergence kernel (fused_implementation: auto, xla
    # or pallas); teacher_top_k > 0 keeps only the
    # teacher's top-k tokens, tail says how the rest of its mass counts (losses.sparse_divergence);
    # ce_weight adds cross-entropy on the real text; student_data_fraction
    # is GKD's λ; keep_fraction is AdaSPEC's share of tokens; taid holds TAID's schedule.
    c.loss = ml_collections.ConfigDict({
        "temperature": 1.0, "alpha": 0.5, "label_smoothing": 0.0, "divergence": "fkl",
        "beta": 0.5, "skew": 0.1, "fused": False, "fused_implementation": "auto",
        "teacher_top_k": 0, "tail": "bucket",
        "ce_weight": 0.0,
        "student_data_fraction": 0.0, "keep_fraction": 0.4,
        "taid": {"t_start": 0.4, "t_end": 1.0, "alpha": 5e-4, "momentum": 0.99}})
    # Sampling continuations (on-policy methods, seqkd): not the loss's temperature.
    c.sampling = ml_collections.ConfigDict({"temperature": 1.0, "top_k": 0, "top_p": 1.0})
    # Diffusion and flow models (jaxdistill.diffusion): parameterization edm, trigflow or flow
    # with its noise range, log-normal training-noise distribution (p_mean, p_std) and the
    # scale of the time the network embeds (diffusion.Parameterization.time_scale);
    # label_dropout is the share of labels dropped for classifier-free guidance.
    c.diffusion = ml_collections.ConfigDict({
        "parameterization": "edm", "sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0,
        "rho": 7.0, "p_mean": -1.2, "p_std": 1.2, "time_scale": 1000.0, "label_dropout": 0.0})
    # Consistency models (cd, ict, scm/sct). cd: `discretization` N noise levels, EMA `target_ema`
    # μ of the target network, distance `metric` (l2 or pseudo_huber, whose c is `huber_c`,
    # 0 for iCT's 0.00054·√d). ict: discretization curriculum from `curriculum_start` s0 to
    # `curriculum_end` s1 levels. scm and sct: tangent warm-up over `tangent_warmup_steps`, tangent
    # normalisation constant `tangent_c`.
    c.consistency = ml_collections.ConfigDict({
        "discretization": 18, "target_ema": 0.95, "metric": "l2", "huber_c": 0.0,
        "curriculum_start": 10, "curriculum_end": 1280, "tangent_warmup_steps": 1000,
        "tangent_c": 0.1})
    # MeanFlow: the share of pairs with r ≠ t (`ratio`), and the adaptive loss weight
    # 1/(‖Δ‖² + c)^p (`adaptive_p`, `adaptive_c`).
    c.meanflow = ml_collections.ConfigDict({"ratio": 0.25, "adaptive_p": 1.0,
                                            "adaptive_c": 1e-3})
    # DMD2: the fake-score network's updates per generator update (two time-scale rule) and
    # their learning rate, the teacher's guidance scale in the real score, and the times the
    # generator is trained to denoise from (empty: one step from σ_max; more for a multi-step
    # generator, reached by backward simulation from its own one-step samples); gan_weight > 0
    # adds the GAN head's generator loss, discriminator_weight its loss in the fake updates.
    c.dmd2 = ml_collections.ConfigDict({"fake_updates": 5, "fake_lr": 2e-4, "guidance": 1.0,
                                        "generator_times": (), "gan_weight": 0.0,
                                        "discriminator_weight": 1e-2})
    # How a generative model samples at evaluation: sampler (euler, heun, consistency,
    # meanflow), steps, guidance scale, and the intermediate times of multistep consistency
    # sampling (empty: spaced like the Karras grid).
    c.generation = ml_collections.ConfigDict(
        {"sampler": "heun", "steps": 18, "guidance": 1.0, "times": ()})
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
    """`NAME[:ARG]` (a module of jaxdistill.configs) or `path/NAME.py[:ARG]` -> `path.py[:ARG]`."""
    name, colon, arg = spec.partition(":")
    if not name.endswith(".py"):
        if name not in available():
            raise DistillError(f"unknown config {name!r}; available: {', '.join(available())}")
        name = os.path.join(_configs_dir(), name + ".py")
    elif not os.path.exists(name):
        raise DistillError(f"config file {name} does not exist")
    return name + colon + arg


def load(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of `spec` (see `resolve`), from its module's `get_config(ARG)`."""
    path, _, arg = resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _configs_dir() -> str:
    import jaxdistill.configs as configs

    return os.path.dirname(configs.__file__)


def available() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(_configs_dir())
                  if f.endswith(".py") and not f.startswith("_") and f != "common.py")


def scale_of(arg: str | None) -> str:
    scale = arg or "local"
    if scale not in SCALES:
        raise DistillError(f"unknown config variant {scale!r}; choose one of {', '.join(SCALES)}")
    return scale


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Fails with the valid keys when `config.<dotted>` does not exist."""
    node, seen = config, "config"
    for key in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            valid = ", ".join(sorted(node)) if isinstance(node, ml_collections.ConfigDict) else "none"
            raise DistillError(f"unknown config key config.{dotted}; valid keys of {seen}: {valid}")
        node, seen = node[key], f"{seen}.{key}"


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))
