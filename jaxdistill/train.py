"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in WORKDIR, logs to metrics.jsonl and TensorBoard, evaluates
every `eval_every` steps, and checkpoints every `checkpoint.every_steps` steps and at the end.
Losses are checked for NaN/Inf before every save, so a run that diverges stops with the step
number and leaves its last good checkpoint intact. On SIGTERM (preemption) every process stops
at one agreed step, saves it and returns; the same command resumes exactly there.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import jax
import ml_collections
import numpy as np
import tensorboardX
import tqdm

from jaxdistill import checkpoint, data, distributed, evaluate, memory, methods
from jaxdistill import config as config_lib
from jaxdistill.errors import NonFiniteLossError
from jaxdistill.run import Run, build


class MetricWriter:
    """metrics.jsonl plus TensorBoard event files, written by process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float], split: str | None = None) -> None:
        if not self.enabled:
            return
        record = {"step": step, **({"split": split} if split else {}), **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.tensorboard.add_scalar(f"{split or 'train'}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


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


def _teacher_ready(config: ml_collections.ConfigDict, workdir: str, devices, progress: bool):
    """Trains the teacher into WORKDIR/teacher when the method needs one and none is given."""
    if (not methods.get(config.method).needs_teacher or config.teacher.checkpoint
            or config.teacher.pretrained or not config.teacher.config):
        return config  # ready, not needed, or not named: `build` then says what is missing
    teacher_config = config_lib.load(config.teacher.config)
    # An independent draw: a teacher of the student's own architecture (born-again chains) must
    # not start from the student's initialisation and data order.
    teacher_config.seed = config.seed + 1
    # The teacher reads the student's dataset (directory, tokenizer, split) in its own layout: an
    # LM teacher learns from packed documents while its students read prompts.
    own_layout = {key: teacher_config.data[key] for key in ("format", "max_length")}
    teacher_config.data = config.data.copy_and_resolve_references()
    teacher_config.data.update(own_layout)
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
    report = run.memory_report(first_batch)
    _print_memory(report)
    run.check_memory(report)
    return itertools.chain([first_batch], batches), report


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after_steps: int | None = None, devices=None,
                       progress: bool = True) -> dict:
    """Trains (or resumes) the run in `workdir`; returns its summary (also printed)."""
    config_lib.validate(config)  # before a teacher trains for it
    config = _teacher_ready(config, workdir, devices, progress)
    run = build(config, devices=devices)
    checkpoint.write_config(workdir, config)
    checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint)
    last_good = checkpointer.latest_step()
    start = last_good or 0
    if last_good is not None and jax.process_index() == 0:
        print(f"{workdir}: resuming from step {last_good} (checkpoints/{last_good})", flush=True)
    batches, memory_report = _batches_within_memory(run, start)
    state = (run.init() if last_good is None
             else checkpointer.restore(last_good, run.abstract_state()))
    end = config.total_steps if stop_after_steps is None else min(
        config.total_steps, start + stop_after_steps)
    writer = MetricWriter(workdir)
    bar = tqdm.tqdm(total=config.total_steps, initial=start, unit="step", dynamic_ncols=True,
                    desc=os.path.basename(os.path.normpath(workdir)),
                    disable=not progress or jax.process_index() != 0)
    pending, train_metrics, eval_metrics, preempted, evaluated_at = [], {}, {}, False, None
    started = time.perf_counter()
    try:
        with distributed.PreemptionWatch() as preemption:
            for step in range(start + 1, end + 1):
                state, metrics = run.train_step(state, next(batches))
                pending.append((step, metrics))
                preempted = preemption.stop(step)
                is_last = step == end or preempted
                save = step % config.checkpoint.every_steps == 0 or is_last
                if step % config.log_every == 0 or save:
                    train_metrics = _checked(pending, workdir, last_good)
                    writer.write(step, train_metrics)
                    bar.set_postfix(loss=f"{train_metrics['loss']:.4f}", refresh=False)
                if not preempted and (step % config.eval_every == 0
                                      or step == config.total_steps):
                    eval_metrics, evaluated_at = _evaluate_all(run, state, writer, step), step
                if save:
                    checkpointer.save(step, state)
                    last_good = step
                bar.update(1)
                if preempted:
                    break
        if not preempted and evaluated_at != int(state.step):  # stopped off an eval step
            eval_metrics = _evaluate_all(run, state, writer, int(state.step))
    finally:
        bar.close()
        checkpointer.close()
        writer.close()
    wall = time.perf_counter() - started
    step = int(state.step)
    summary = {"workdir": workdir, "method": config.method, "step": step,
               "total_steps": config.total_steps, "wall_s": wall,
               "steps_per_s": (step - start) / wall,
               "preempted": preempted,
               "train": train_metrics, "eval": eval_metrics, "memory": memory_report}
    _print_summary(summary)
    return summary
