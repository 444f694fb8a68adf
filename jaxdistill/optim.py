"""Optimizers and learning-rate schedules from config, built from optax pieces."""

from __future__ import annotations

import optax

from jaxdistill.errors import DistillError

_SCHEDULES = ("constant", "cosine", "linear")
_OPTIMIZERS = ("sgd", "adam", "adamw")


def schedule(opt_config, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `lr`, then constant, cosine or linear decay to 0 at `total_steps`."""
    name, lr, warmup = opt_config.schedule, opt_config.lr, opt_config.warmup_steps
    if name not in _SCHEDULES:
        raise DistillError(f"unknown schedule {name!r}; choose one of {', '.join(_SCHEDULES)}")
    decay_steps = max(total_steps - warmup, 1)
    after_warmup = {
        "constant": optax.constant_schedule(lr),
        "cosine": optax.cosine_decay_schedule(lr, decay_steps),
        "linear": optax.linear_schedule(lr, 0.0, decay_steps),
    }[name]
    if not warmup:
        return after_warmup
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after_warmup], [warmup])


def build(opt_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    name = opt_config.name
    if name not in _OPTIMIZERS:
        raise DistillError(f"unknown optimizer {name!r}; choose one of {', '.join(_OPTIMIZERS)}")
    lr = schedule(opt_config, total_steps)
    if name == "sgd":
        base = optax.sgd(lr, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
    elif name == "adam":
        base = optax.adam(lr, b1=opt_config.b1, b2=opt_config.b2)
    else:
        base = optax.adamw(lr, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=opt_config.weight_decay)
    clip = ([optax.clip_by_global_norm(opt_config.grad_clip_norm)]
            if opt_config.grad_clip_norm else [])
    return optax.chain(*clip, base), lr
