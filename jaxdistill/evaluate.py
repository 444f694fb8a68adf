"""Evaluation: sums over padded batches, reduced on the host to exact split-level metrics."""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import losses


def make_eval_step(student, teacher):
    """`eval_step(params, teacher_params, batch) -> sums`; teacher agreement when there is one."""

    def eval_step(params, teacher_params, batch):
        mask = batch["mask"].astype(jnp.float32)
        logits = student.apply(params, batch["image"], train=False).astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
        prediction = jnp.argmax(logits, -1)
        sums = {
            "count": jnp.sum(mask),
            "correct": jnp.sum((prediction == batch["label"]) * mask),
            "nll": jnp.sum(nll * mask),
        }
        if teacher is not None:
            teacher_logits = teacher.apply(teacher_params, batch["image"], train=False)
            sums["agree"] = jnp.sum((prediction == jnp.argmax(teacher_logits, -1)) * mask)
            sums["teacher_correct"] = jnp.sum((jnp.argmax(teacher_logits, -1) == batch["label"]) * mask)
        return sums

    return eval_step


def summarize(batch_sums: Iterable[dict]) -> dict[str, float]:
    """Turns per-batch sums into accuracy, loss (mean NLL) and teacher agreement."""
    totals: dict[str, float] = {}
    for sums in batch_sums:
        for key, value in jax.device_get(sums).items():
            totals[key] = totals.get(key, 0.0) + float(np.asarray(value))
    count = max(totals.pop("count"), 1.0)
    metrics = {"accuracy": totals["correct"] / count, "loss": totals["nll"] / count,
               "examples": int(count)}
    if "agree" in totals:
        metrics["teacher_agreement"] = totals["agree"] / count
        metrics["teacher_accuracy"] = totals["teacher_correct"] / count
    return metrics


def evaluate_split(run, state, split: str) -> dict[str, float]:
    """Exact metrics of `state` on a whole split of the run's dataset."""
    from jaxdistill import data

    batches = data.eval_batches(run.config.data, split, run.config.eval_batch_size)
    return summarize(run.eval_step(state, run.shard_batch(batch)) for batch in batches)
