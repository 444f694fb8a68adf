"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in WORKDIR that verifies, logs to metrics.jsonl and
TensorBoard, evaluates every `eval_every` steps, and checkpoints every `checkpoint.every_steps`
steps and at the end. Losses and params are checked for NaN/Inf before every save, so a run that
diverges stops with the step number and leaves its last good checkpoint intact. On SIGTERM
(preemption) every process stops at one agreed step, saves it and raises `Preempted`; the same
command resumes exactly there. The workdir is locked while the run goes on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from tensorboardX import summary as tensorboard_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from jaxdistill import checkpoint, data, distributed, evaluate, memory, methods
from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError, NonFiniteLossError, Preempted
from jaxdistill.run import Run, build


def _parsed_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None  # a row a killed process left half written
    return row if isinstance(row, dict) and "step" in row else None


class MetricWriter:
    """metrics.jsonl (each line with its wall-clock `time`) plus TensorBoard event files, written
    by process 0 only and synchronously: a write that fails (a full disk) raises here, where a
    background writer thread would die and leave the next write waiting on it forever."""

    def __init__(self, workdir: str, start_step: int):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        # Every process reads them, so all decide alike what to evaluate.
        rows, dropped = self._rows_up_to(start_step)
        self.evaluated_steps = {row["step"] for row in rows if "split" in row}
        if self.enabled:
            try:
                os.makedirs(os.path.join(workdir, "tensorboard"), exist_ok=True)
                if dropped:
                    self._rewrite(rows)
                self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
                self.events = EventsWriter(os.path.join(workdir, "tensorboard", "events"))
            except OSError as e:
                raise self._cannot_write("the metrics", e) from None

    def write(self, step: int, metrics: dict[str, float], split: str | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {"step": step, **({"split": split} if split else {}), "time": now, **metrics}
        try:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
            for key, value in metrics.items():
                self.events.write_event(event_pb2.Event(
                    wall_time=now, step=step,
                    summary=tensorboard_summary.scalar(f"{split or 'train'}/{key}", value)))
            self.events.flush()
        except OSError as e:
            raise self._cannot_write(f"the metrics of step {step}", e) from None

    def _rows_up_to(self, step: int) -> tuple[list[dict], bool]:
        """The logged rows up to `step`, the one the run resumes from (a run killed after
        logging steps it never checkpointed trains them again, and logs them again), and
        whether any row was dropped."""
        path = os.path.join(self.workdir, "metrics.jsonl")
        if not os.path.exists(path):
            return [], False
        with open(path) as f:
            rows = [_parsed_row(line) for line in f]
        kept = [row for row in rows if row is not None and row["step"] <= step]
        return kept, len(kept) < len(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        path = os.path.join(self.workdir, "metrics.jsonl")
        if os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
            os.replace(path + ".tmp", path)

    def _cannot_write(self, what: str, error: OSError) -> DistillError:
        return DistillError(
            f"cannot write {what} under {self.workdir} ({error.strerror}); free space there (or"
            " fix its permissions) and rerun the same command: it resumes from the last good"
            " checkpoint")

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.events.close()


def _checked(pending: list[tuple[int, dict]], workdir: str, last_good: int | None) -> dict:
    """Fetches the metrics of the steps run since the last check; fails on the first bad loss."""
    fetched = jax.device_get(pending)
    pending.clear()
    for step, metrics in fetched:
        loss, nonfinite = float(metrics["loss"]), int(metrics["nonfinite_params"])
        if np.isfinite(loss) and not nonfinite:
            continue
        what = (f"loss became {loss}" if not np.isfinite(loss) else
                f"{nonfinite} params became non-finite (the loss was {loss:.4g})")
        kept = (f"the last good checkpoint (step {last_good}) in {workdir}/checkpoints is"
                " intact" if last_good is not None else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"{what} at step {step}; training stopped and {kept}. Lower config.optimizer.lr,"
            " set config.optimizer.grad_clip_norm, or check the inputs", step)
    return {key: float(value) for key, value in fetched[-1][1].items()}


def _teacher_to_train(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """The config of the teacher the run trains first into WORKDIR/teacher: when the method
    needs a teacher that only exists as a config (one not named at all is `build`'s to report)."""
    if not (methods.get(config.method).needs_teacher and not config.teacher.checkpoint
            and not config.teacher.pretrained and config.teacher.config):
        return None
    teacher_config = config_lib.load(config.teacher.config)
    # An independent draw: a teacher of the student's own architecture (born-again chains) must
    # not start from the student's initialisation and data order.
    teacher_config.seed = config.seed + 1
    # The teacher reads the student's dataset (directory, tokenizer, split) in its own layout: an
    # LM teacher learns from packed documents while its students read prompts.
    own_layout = {key: teacher_config.data[key] for key in ("format", "max_length")}
    teacher_config.data = config.data.copy_and_resolve_references()
    teacher_config.data.update(own_layout)
    config_lib.validate(teacher_config)
    return teacher_config


def _build_before_the_teacher(config: ml_collections.ConfigDict, devices,
                              teacher_config: ml_collections.ConfigDict | None) -> Run:
    """The run, built against the teacher it will train first when there is one: every check
    of the student, the teacher pairing and the memory estimate, before any training."""
    return build(config.copy_and_resolve_references(), devices=devices,
                 teacher_to_train=teacher_config)


def _teacher_ready(config: ml_collections.ConfigDict, workdir: str, devices, progress: bool):
    """Trains the teacher into WORKDIR/teacher when the method needs one and none is given."""
    teacher_config = _teacher_to_train(config)
    if teacher_config is None:
        return config
    _build_before_the_teacher(config, devices, teacher_config)
    teacher_dir = os.path.join(workdir, "teacher")
    train_and_evaluate(teacher_config, teacher_dir, devices=devices, progress=progress)
    config = config.copy_and_resolve_references()
    config.teacher.checkpoint = teacher_dir
    return config


def _evaluate_all(run: Run, state, writer: MetricWriter, step: int) -> dict:
    results = {}
    for split in run.config.eval_splits:
        results[split] = evaluate.evaluate_split(run, state, split)
        writer.write(step, results[split], split=split)
    return results


def _print_memory(report: dict[str, int]) -> None:
    if jax.process_index() == 0:
        print(f"memory/device (estimate, before compiling): {memory.format_report(report)};"
              f" total {memory.format_bytes(sum(report.values()))}", flush=True)


def _print_summary(summary: dict) -> None:
    if jax.process_index() != 0:
        return
    lines = [f"{summary['workdir']}: method {summary['method']}, step {summary['step']}"
             f" of {summary['total_steps']}, {summary['wall_s']:.1f} s"
             f" ({summary['steps_per_s']:.1f} steps/s)"]
    if summary["preempted"]:
        lines.append(f"  preempted: saved step {summary['step']}; the same command resumes there")
    if summary["train"]:
        lines.append(f"  train loss {summary['train']['loss']:.4f}")
    for split, metrics in summary["eval"].items():
        values = ", ".join(f"{key.replace('_', ' ')} {value:.4f}" if isinstance(value, float)
                           else f"{key.replace('_', ' ')} {value}"
                           for key, value in metrics.items() if key != "examples")
        lines.append(f"  {split:<10} {values} ({metrics['examples']} examples)")
    print("\n".join(lines), flush=True)


def _batches_within_memory(run: Run, start: int):
    """The global batches from step `start`, once the first has shown that the layout fits."""
    config = run.config
    batches = (run.shard_batch(local) for local in data.train_iterator(
        config.data, config.batch_size, config.seed, start_batch=start))
    first_batch = next(batches)
    examples = data.summary(config.data)  # what became of data files' examples; "" for TFDS
    if examples and jax.process_index() == 0:
        print(examples, flush=True)
    report = run.memory_report(first_batch)
    _print_memory(report)
    run.check_memory(report)
    return itertools.chain([first_batch], batches), report


@dataclasses.dataclass
class _Progress:
    """What the loop has done so far: the state and the latest train and eval metrics."""

    state: Any
    last_good: int | None
    train: dict = dataclasses.field(default_factory=dict)
    eval: dict = dataclasses.field(default_factory=dict)
    evaluated_at: int | None = None
    preempted: bool = False


def _train_steps(run: Run, progress: _Progress, batches, end: int, checkpointer, writer, bar,
                 preemption, workdir: str) -> None:
    """Steps up to `end`: logs (after checking every step's loss and params), evaluates,
    checkpoints, and stops at the step a SIGTERM agreed on."""
    config = run.config
    pending = []
    for step in range(int(progress.state.step) + 1, end + 1):
        progress.state, metrics = run.train_step(progress.state, next(batches))
        pending.append((step, metrics))
        progress.preempted = preemption.stop(step)
        save = (step % config.checkpoint.every_steps == 0 or step == end
                or progress.preempted)
        if step % config.log_every == 0 or save:
            progress.train = _checked(pending, workdir, progress.last_good)
            writer.write(step, progress.train)
            bar.set_postfix(loss=f"{progress.train['loss']:.4f}", refresh=False)
        if not progress.preempted and (step % config.eval_every == 0
                                       or step == config.total_steps):
            progress.eval, progress.evaluated_at = _evaluate_all(run, progress.state, writer,
                                                                 step), step
        if save:
            checkpointer.save(step, progress.state)
            progress.last_good = step
        bar.update(1)
        if progress.preempted:
            return


def dry_run(config: ml_collections.ConfigDict, *, devices=None) -> dict[str, int]:
    """Every check a run makes before it trains, and its memory estimate per device (returned
    and printed); nothing is trained or written. A teacher the run would train first is
    checked as a config, and the student against that teacher's shapes."""
    config_lib.validate(config)
    teacher_config = _teacher_to_train(config)
    run = _build_before_the_teacher(config, devices, teacher_config)
    if teacher_config is not None and jax.process_index() == 0:
        print(f"dry run: the teacher ({config.teacher.config}) is trained first into"
              " WORKDIR/teacher", flush=True)
    _, report = _batches_within_memory(run, 0)
    return report


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after_steps: int | None = None, devices=None,
                       progress: bool = True) -> dict:
    """Trains (or resumes) the run in `workdir`; returns its summary (also printed). A SIGTERM
    saves the step it stopped at and raises `Preempted`."""
    config_lib.validate(config)  # before a teacher trains for it
    # SIGTERM is caught from here until the last save has finished: a signal during start-up, or
    # a second one during the preemption save, stops the run at a step instead of killing it.
    with distributed.PreemptionWatch() as preemption, checkpoint.workdir_lock(workdir):
        config = _teacher_ready(config, workdir, devices, progress)
        run = build(config, devices=devices)
        checkpoint.write_config(workdir, config)
        checkpoint.pin_teacher(workdir, run.teacher_identity)
        checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint)
        restored = checkpointer.restore_newest(run.abstract_state())
        last_good, state = restored or (None, None)
        start = last_good or 0
        if last_good is not None and jax.process_index() == 0:
            print(f"{workdir}: resuming from step {last_good} (checkpoints/{last_good})",
                  flush=True)
        batches, memory_report = _batches_within_memory(run, start)
        done = _Progress(run.init() if state is None else state, last_good)
        end = config.total_steps if stop_after_steps is None else min(
            config.total_steps, start + stop_after_steps)
        writer = MetricWriter(workdir, start)
        bar = tqdm.tqdm(total=config.total_steps, initial=start, unit="step", dynamic_ncols=True,
                        desc=os.path.basename(os.path.normpath(workdir)),
                        disable=not progress or jax.process_index() != 0)
        started = time.perf_counter()
        try:
            if (last_good is not None and last_good not in writer.evaluated_steps
                    and (last_good % config.eval_every == 0 or last_good == config.total_steps)):
                # A preempted run saved this eval step without evaluating it.
                done.eval = _evaluate_all(run, done.state, writer, last_good)
                done.evaluated_at = last_good
            _train_steps(run, done, batches, end, checkpointer, writer, bar, preemption, workdir)
            step = int(done.state.step)
            if not done.preempted and done.evaluated_at != step:  # stopped off an eval step
                done.eval = _evaluate_all(run, done.state, writer, step)
        finally:
            bar.close()
            checkpointer.close()
            writer.close()
    wall = time.perf_counter() - started
    step = int(done.state.step)
    summary = {"workdir": workdir, "method": config.method, "step": step,
               "total_steps": config.total_steps, "wall_s": wall,
               "steps_per_s": (step - start) / wall, "preempted": done.preempted,
               "train": done.train, "eval": done.eval, "memory": memory_report}
    _print_summary(summary)
    if done.preempted:
        raise Preempted(summary)
    return summary
