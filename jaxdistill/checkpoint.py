"""Orbax checkpoints: the student's DistillState, never the teacher.

A run directory holds `config.json` (the run's full config) and `checkpoints/` (an orbax
CheckpointManager). Orbax only lists finalized steps, so an interrupted save never shadows the
last good checkpoint, and the loop saves only after it has checked that the loss is finite. The
data position is the step (see `data.train_iterator`), so a checkpoint holds arrays only and any
process count can resume it: orbax restores each array into the new run's sharding.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError


def _restore_args(abstract_tree):
    return ocp.checkpoint_utils.construct_restore_args(abstract_tree)


class Checkpointer:
    """Saves and restores the `state` item under WORKDIR/checkpoints."""

    def __init__(self, workdir: str, checkpoint_config: ml_collections.ConfigDict):
        self.manager = ocp.CheckpointManager(
            epath.Path(workdir).absolute() / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=checkpoint_config.keep,
                enable_async_checkpointing=checkpoint_config.async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state)))

    def restore(self, step: int, abstract_state):
        """Restores into `abstract_state`'s shardings (which may differ from the saving run's)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract_state,
                                         restore_args=_restore_args(abstract_state))))
        return restored.state

    def close(self) -> None:
        self.manager.close()


# What the checkpoint's arrays depend on: resuming with other values cannot restore them, and
# config.json (which KD runs read to rebuild a teacher) would describe a model it does not hold.
_FIXED_FOR_RESUME = ("method", "student")


def _canonical(value) -> str:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return json.dumps(value, sort_keys=True, default=list)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes WORKDIR/config.json, refusing a config whose model differs from the one saved."""
    if os.path.exists(os.path.join(workdir, "config.json")):
        saved = read_config(workdir)
        for key in _FIXED_FOR_RESUME:
            if _canonical(saved[key]) != _canonical(config[key]):
                raise DistillError(
                    f"{workdir} holds a run with a different config.{key} ({_canonical(saved[key])}"
                    f" there, {_canonical(config[key])} now); use a new --workdir or the saved"
                    " settings")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))


def read_config(run_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise DistillError(
            f"no run found at {run_dir} ({path} is missing); point config.teacher.checkpoint at a"
            " workdir written by `jaxdistill train`, or leave it empty to train the teacher first")
    with open(path) as f:
        return config_lib.from_json(f.read())


def load_params(run_dir: str, abstract_params, *, ema: bool = False):
    """The student parameters (`ema`: their EMA) of the newest checkpoint of the run in
    `run_dir`, placed by the shardings of `abstract_params` (only the params are read, not the
    optimizer state)."""
    key = "ema_params" if ema else "params"
    manager = ocp.CheckpointManager(epath.Path(run_dir).absolute() / "checkpoints")
    step = manager.latest_step()
    if step is None:
        raise DistillError(
            f"the run at {run_dir} has no finished checkpoint; train it to the end first"
            f" (`jaxdistill train --workdir {run_dir} ...`)")
    target = {key: abstract_params}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=_restore_args(target), partial_restore=True)))
    manager.close()
    return restored.state[key]
