"""Orbax checkpoints: the student's DistillState, never the teacher.

A run directory holds `config.json` (the run's full config) and `checkpoints/` (an orbax
CheckpointManager). Orbax only lists finalized steps, so an interrupted save never shadows the
last good checkpoint, and the loop saves only after it has checked that the loss is finite. The
data position is the step (see `data.train_iterator`), so a checkpoint holds arrays only and any
process count can resume it: orbax restores each array into the new run's sharding.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError


def _restore_args(abstract_tree):
    return ocp.checkpoint_utils.construct_restore_args(abstract_tree)


def _checksums(step_dir: str) -> dict[str, str]:
    """sha256 of every file of a saved step, by its path inside the step's directory."""
    sums = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                sums[os.path.relpath(path, step_dir)] = hashlib.file_digest(f, "sha256").hexdigest()
    return sums


def _saved_as_a_leaf(node) -> bool:
    """What orbax's tree metadata records as an entry although JAX has no leaf there: None and
    empty containers (optax's EmptyState)."""
    return node is None or (isinstance(node, (tuple, list, dict)) and not node)


def changed_files(run_dir: str, step: int) -> list[str]:
    """The files of the run's `step` that differ from their record (none without a record)."""
    record = os.path.join(run_dir, "checksums", f"{step}.json")
    if not os.path.exists(record):
        return []
    with open(record) as f:
        recorded = json.load(f)
    found = _checksums(os.path.join(run_dir, "checkpoints", str(step)))
    return sorted(name for name in recorded.keys() | found.keys()
                  if recorded.get(name) != found.get(name))


class Checkpointer:
    """Saves and restores the `state` item under WORKDIR/checkpoints.

    Each save gets a record of its files' sha256 in WORKDIR/checksums/STEP.json once it has
    finished (async saves finish in the background: at the next save or at close). Resuming
    takes the newest step that verifies: its files match the record, it restores, and its params
    are finite; every step skipped on the way is named with the reason.
    """

    def __init__(self, workdir: str, checkpoint_config: ml_collections.ConfigDict):
        self.workdir = workdir
        self.checksums_dir = os.path.join(workdir, "checksums")
        self._unrecorded: list[int] = []
        self._failed = False  # a save failed and was reported; close() must not report it again
        logging.getLogger("absl").addFilter(_ORBAX_ERRORS)
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
        """Starts saving `state` as `step` (finished in the background when async); a save that
        cannot fit the disk is refused before it starts, and one that fails is reported in one
        line naming the step a rerun resumes from."""
        self._record_saved()
        self._check_space(step, state)
        with self._saving(step):
            self.manager.save(step, force=True, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state)))
        self._unrecorded.append(step)

    def _resume_hint(self) -> str:
        last = self.manager.latest_step()
        return ("it resumes from the last good checkpoint (step"
                f" {last})" if last is not None else "no checkpoint was written yet")

    def _check_space(self, step: int, state) -> None:
        needed = sum(x.nbytes for x in jax.tree.leaves(state))
        free = shutil.disk_usage(self.workdir).free
        if free < needed * _SPACE_FACTOR:
            raise DistillError(
                f"the checkpoint of step {step} needs about {needed / 2**20:.1f} MiB but"
                f" {self.workdir} has {free / 2**20:.1f} MiB free; free space there and rerun"
                f" the same command: {self._resume_hint()}")

    @contextlib.contextmanager
    def _saving(self, step: int | None):
        """Reports a failed save (a full disk, a quota, a file-size limit) in one line; orbax
        leaves the half-written step in a temporary directory that is never restored."""
        try:
            yield
        except Exception as e:  # orbax and tensorstore report write failures in many types
            self._failed = True
            which = f"step {step}" if step is not None else "the last step"
            raise DistillError(
                f"saving the checkpoint of {which} under {self.workdir} failed"
                f" ({_write_failure(e)}); free space there (or fix its permissions) and rerun the"
                f" same command: {self._resume_hint()}") from e

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.workdir, "checkpoints", str(step))

    def _record_saved(self) -> None:
        """Records the saves made so far, once they have finished (orbax waits for an async save
        before it starts the next one anyway)."""
        with self._saving(self._unrecorded[-1] if self._unrecorded else None):
            self.manager.wait_until_finished()
        self.manager.reload()  # the steps on disk, after max_to_keep removed the oldest
        kept = set(self.manager.all_steps())
        recorded, self._unrecorded = self._unrecorded, []
        for step in recorded:
            if step in kept and jax.process_index() == 0:
                os.makedirs(self.checksums_dir, exist_ok=True)
                _write_atomically(os.path.join(self.checksums_dir, f"{step}.json"),
                                  json.dumps(_checksums(self._step_dir(step))))


    def _set_aside(self, step: int, problem: str) -> None:
        """Moves a step that does not verify to WORKDIR/skipped_checkpoints (kept for a look, out
        of the way of the run that saves that step again)."""
        if jax.process_index() == 0:
            print(f"{self.workdir}: checkpoint {step} skipped: {problem}; moved to"
                  f" skipped_checkpoints/{step}", flush=True)
            aside = os.path.join(self.workdir, "skipped_checkpoints")
            os.makedirs(aside, exist_ok=True)
            os.replace(self._step_dir(step), os.path.join(aside, f"{step}"))
            record = os.path.join(self.checksums_dir, f"{step}.json")
            if os.path.exists(record):
                os.replace(record, os.path.join(aside, f"{step}.checksums.json"))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def _check_structure(self, step: int, abstract_state) -> None:
        """Refuses a checkpoint whose state has other entries than this run's: the run's
        settings changed (not the files), so it must not be set aside as damaged."""
        try:
            with open(os.path.join(self._step_dir(step), "state", "_METADATA")) as f:
                saved = {ast.literal_eval(key) for key in json.load(f)["tree_metadata"]}
        except (OSError, ValueError, KeyError, SyntaxError):
            return  # unreadable metadata is damage, which the checks that follow report
        ours = {tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                      for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(
                    abstract_state, is_leaf=_saved_as_a_leaf)[0]}
        if saved != ours:
            example = "/".join(sorted(saved ^ ours)[0])
            raise DistillError(
                f"checkpoint {step} in {self.workdir} holds another training state than this run"
                f" builds ({len(saved ^ ours)} entries differ, e.g. {example}): the optimizer, EMA"
                " or method settings changed since it was saved; resume with the saved settings"
                " (its config.json) or use a new --workdir")

    def restore_newest(self, abstract_state):
        """(step, state) of the newest step that verifies, or None when there is no checkpoint."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            self._check_structure(step, abstract_state)
            changed = changed_files(self.workdir, step)
            if changed:
                problem = f"{len(changed)} of its files changed since the save ({changed[0]}, ...)"
            else:
                try:
                    state = self.restore(step, abstract_state)
                except Exception as e:  # orbax and tensorstore report damage in many types
                    problem = f"it does not restore ({type(e).__name__}: {str(e)[:200]})"
                else:
                    if all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params)):
                        return step, state
                    problem = "it holds non-finite params"
            self._set_aside(step, problem)
        if steps:
            raise DistillError(
                f"no checkpoint in {self.workdir}/checkpoints verifies (steps"
                f" {', '.join(map(str, steps))}, now in skipped_checkpoints; reasons above); the"
                " same command now starts the run over")
        return None

    def restore(self, step: int, abstract_state):
        """Restores into `abstract_state`'s shardings (which may differ from the saving run's)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract_state,
                                         restore_args=_restore_args(abstract_state))))
        return restored.state

    def close(self) -> None:
        """Waits for the last save and records it (after a reported failure, only lets go)."""
        try:
            if not self._failed:
                self._record_saved()
            self.manager.close()
        finally:
            logging.getLogger("absl").removeFilter(_ORBAX_ERRORS)


class _OrbaxErrorsWeReport(logging.Filter):
    """Drops orbax's own error logs (a traceback per background thread, hundreds of lines for
    one full disk): every save failure reaches `Checkpointer._saving`, and every restore failure
    `restore_newest`, which report it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or "orbax" not in record.pathname


_ORBAX_ERRORS = _OrbaxErrorsWeReport()

# A save needs the state's size on disk and some room to spare (metadata, the next metrics).
_SPACE_FACTOR = 1.1


def _write_failure(error: Exception) -> str:
    """The operating system's reason for a failed write when the error carries one (tensorstore
    reports `[os_error_code='28']`), else the error's first line."""
    code = getattr(error, "errno", None)
    found = re.search(r"os_error_code='(\d+)'", str(error))
    if code is None and found:
        code = int(found.group(1))
    if code is not None:
        return os.strerror(code)
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


# What the checkpoint's arrays depend on: resuming with other values cannot restore them, and
# config.json (which KD runs read to rebuild a teacher) would describe a model it does not hold.
_FIXED_FOR_RESUME = ("method", "student")


def _canonical(value) -> str:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return json.dumps(value, sort_keys=True, default=list)


def _flat(config: ml_collections.ConfigDict) -> dict:
    return {"/".join(path): value for path, value in
            traverse_util.flatten_dict(json.loads(config_lib.to_json(config))).items()}


def has_checkpoint(workdir: str) -> bool:
    """Whether a run saved a step (an empty directory left by a stopped run does not count)."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes WORKDIR/config.json atomically. Resuming a checkpointed run with another model is
    refused; any other setting that changed is appended to WORKDIR/config_history.jsonl (the
    old and new values, with the time) and printed, so config.json never hides what a run's
    steps were trained with."""
    changed = {}
    if os.path.exists(os.path.join(workdir, "config.json")) and has_checkpoint(workdir):
        saved = read_config(workdir)
        for key in _FIXED_FOR_RESUME:
            if _canonical(saved[key]) != _canonical(config[key]):
                raise DistillError(
                    f"{workdir} holds a run with a different config.{key} ({_canonical(saved[key])}"
                    f" there, {_canonical(config[key])} now); use a new --workdir or the saved"
                    " settings")
        old, new = _flat(saved), _flat(config)
        changed = {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys())
                   if old.get(key) != new.get(key)}
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    if changed:
        print(f"{workdir}: resuming with changed settings: "
              + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items()),
              flush=True)
        with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "changed": changed}) + "\n")
    _write_atomically(os.path.join(workdir, "config.json"), config_lib.to_json(config))


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds WORKDIR/.lock for the run (process 0 of it): a second run started on the same
    workdir, which would interleave its checkpoints and metrics with this one's, is refused. The
    operating system releases the lock when the process ends, however it ends."""
    if not workdir:
        raise DistillError("--workdir is empty; name the directory the run writes to")
    if jax.process_index() != 0:
        yield
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        lock = open(os.path.join(workdir, ".lock"), "a+")
    except OSError as e:
        raise DistillError(f"cannot write to {workdir} ({e.strerror}); use a writable"
                           " --workdir") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise DistillError(f"{workdir} is in use by a run that is still going ({holder});"
                               " wait for it to end or use another --workdir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_config(run_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise DistillError(
            f"no run found at {run_dir} ({path} is missing); point config.teacher.checkpoint at a"
            " workdir written by `jaxdistill train`, or leave it empty to train the teacher first")
    with open(path) as f:
        text = f.read()
    try:
        return config_lib.from_json(text)
    except ValueError as e:
        raise DistillError(f"{path} is not a config jaxdistill wrote ({e}); restore the run's"
                           " config.json or point at another run") from None


def newest_step(run_dir: str) -> int:
    """The newest finished checkpoint's step of the run in `run_dir`."""
    directory = epath.Path(run_dir).absolute() / "checkpoints"
    step = None
    if directory.exists():  # orbax would try to create it, which a read-only run cannot take
        manager = ocp.CheckpointManager(directory)
        step = manager.latest_step()
        manager.close()
    if step is None:
        raise DistillError(
            f"the run at {run_dir} has no finished checkpoint; train it to the end first"
            f" (`jaxdistill train --workdir {run_dir} ...`)")
    return step


def fingerprint(run_dir: str, step: int) -> str:
    """Identifies a run's checkpoint by its config.json and the names and sizes of the step's
    files (cheap to compute, and it changes when the checkpoint is rewritten or replaced)."""
    digest = hashlib.sha256()
    with open(os.path.join(run_dir, "config.json"), "rb") as f:
        digest.update(f.read())
    step_dir = os.path.join(run_dir, "checkpoints", str(step))
    for root, _, files in sorted(os.walk(step_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(f"{os.path.relpath(path, step_dir)}:{os.path.getsize(path)};".encode())
    return digest.hexdigest()[:16]


def pin_teacher(workdir: str, teacher: dict | None) -> None:
    """Records in WORKDIR/teacher.json which teacher checkpoint ({"checkpoint", "step",
    "fingerprint"}) teaches the run, and refuses to resume it with another."""
    path = os.path.join(workdir, "teacher.json")
    if teacher is None:
        return
    if os.path.exists(path):
        with open(path) as f:
            pinned = json.load(f)
        if (pinned["step"], pinned["fingerprint"]) != (teacher["step"], teacher["fingerprint"]):
            raise DistillError(
                f"{workdir} was taught by step {pinned['step']} of {pinned['checkpoint']}"
                f" (fingerprint {pinned['fingerprint']}), but the teacher is now step"
                f" {teacher['step']} of {teacher['checkpoint']} (fingerprint"
                f" {teacher['fingerprint']}); restore that teacher checkpoint, or train the"
                " student with this teacher in a new --workdir")
        return
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        _write_atomically(path, json.dumps(teacher, indent=2))


def load_params(run_dir: str, abstract_params, *, step: int | None = None, ema: bool = False):
    """The student parameters (`ema`: their EMA) of the run's checkpoint at `step` (default: the
    newest), placed by the shardings of `abstract_params` (only the params are read, not the
    optimizer state)."""
    key = "ema_params" if ema else "params"
    step = newest_step(run_dir) if step is None else step
    changed = changed_files(run_dir, step)
    if changed:
        raise DistillError(
            f"checkpoint {step} of the run at {run_dir} has {len(changed)} files that changed since"
            f" the save ({changed[0]}, ...); retrain that run or restore its files")
    manager = ocp.CheckpointManager(epath.Path(run_dir).absolute() / "checkpoints")
    target = {key: abstract_params}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=_restore_args(target), partial_restore=True)))
    except Exception as e:  # orbax and tensorstore report damage in many types
        raise DistillError(
            f"checkpoint {step} of the run at {run_dir} does not restore ({type(e).__name__}:"
            f" {str(e).splitlines()[0][:200]}); retrain that run or restore its files") from None
    finally:
        manager.close()
    return restored.state[key]
