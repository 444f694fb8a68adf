"""The training state: a plain pytree holding everything that changes during a run.

A separate teacher's parameters are deliberately not in here: they are a separate, never-donated,
never-checkpointed argument of the step, so no optimizer or update can ever reach them.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class DistillState:
    step: jax.Array          # number of completed optimizer steps
    params: Any              # student parameters
    opt_state: Any
    rng: jax.Array           # base key; each step folds in its step number
    ema_params: Any = None   # exponential moving average of params, when config.ema_decay > 0
    # What a method carries from step to step outside the gradient (TAID's interpolation
    # coefficient, CD's target network, PS-KD's previous-epoch params); checkpointed with the rest.
    method_state: Any = None


def create(params, optimizer, rng: jax.Array, ema: bool, method_state: Any = None) -> DistillState:
    return DistillState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=rng,
        ema_params=jax.tree.map(lambda p: p.copy(), params) if ema else None,
        method_state=method_state,
    )
