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
    # The student's params at the end of the previous epoch: the teacher of self-distillation
    # methods (PS-KD). Part of the student's own state, so it is checkpointed, never optimized.
    snapshot_params: Any = None
    # What a method carries from step to step outside the gradient (TAID's interpolation
    # coefficient); checkpointed with the rest.
    method_state: Any = None


def create(params, optimizer, rng: jax.Array, ema: bool, snapshot: bool = False,
           method_state: Any = None) -> DistillState:
    def copy():
        return jax.tree.map(lambda p: p.copy(), params)

    return DistillState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=rng,
        ema_params=copy() if ema else None,
        snapshot_params=copy() if snapshot else None,
        method_state=method_state,
    )
