"""Evaluation over whole splits in padded batches, reduced on the host to exact split metrics.

Each task has a jitted per-batch step and a host-side reduction:
- classification: sums of correct predictions, NLL and teacher agreement, divided at the end;
- sentences: the student's (and teacher's) sentence embeddings, gathered for the whole split,
  then compared pairwise: how well the student's cosine similarities between held-out sentences
  rank like the teacher's (Spearman), and how often both pick the same nearest neighbour;
- lm: per-token sums on the real text (the student's NLL, and with a teacher its NLL and the
  top-1 agreement of the two), and for prompt data the teacher's NLL of continuations the
  student samples (config.sampling, a fixed key per batch position so every eval draws alike);
- generation: the student's samples (config.generation) beside the split's real examples, as
  many of each, scored by the sliced Wasserstein distance (`swd`) and, given a classifier run
  (config.generation.fd_classifier), by `fd`, the Fréchet distance in its penultimate features:
  the metric the step-distillation tables report for digits, computed the same way.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from jaxdistill import data, loading, losses
from jaxdistill.diffusion import distances, parameterizations, sampling
from jaxdistill.errors import DistillError
from jaxdistill.methods import lm
from jaxdistill.models import classifiers


def _classification_step(student, teacher):
    def eval_step(params, teacher_params, batch):
        mask = batch["mask"].astype(jnp.float32)
        logits = student.apply(params, batch["image"], train=False).astype(jnp.float32)
        nll = losses.token_nll(logits, batch["label"])
        prediction = jnp.argmax(logits, -1)
        sums = {
            "count": jnp.sum(mask),
            "correct": jnp.sum((prediction == batch["label"]) * mask),
            "nll": jnp.sum(nll * mask),
        }
        if teacher is not None:
            teacher_logits = teacher.apply(teacher_params, batch["image"], train=False)
            sums["agree"] = jnp.sum((prediction == jnp.argmax(teacher_logits, -1)) * mask)
            teacher_correct = jnp.argmax(teacher_logits, -1) == batch["label"]
            sums["teacher_correct"] = jnp.sum(teacher_correct * mask)
        return sums

    return eval_step


def _totals(batch_sums: Iterable[dict]) -> dict[str, float]:
    """The per-batch sums added up over the split, on the host."""
    totals: dict[str, float] = {}
    for sums in batch_sums:
        for key, value in jax.device_get(sums).items():
            totals[key] = totals.get(key, 0.0) + float(np.asarray(value))
    return totals


def _summarize_classification(batch_sums: Iterable[dict]) -> dict[str, float]:
    totals = _totals(batch_sums)
    count = max(totals.pop("count"), 1.0)
    metrics = {"accuracy": totals["correct"] / count, "loss": totals["nll"] / count,
               "examples": int(count)}
    if "agree" in totals:
        metrics["teacher_agreement"] = totals["agree"] / count
        metrics["teacher_accuracy"] = totals["teacher_correct"] / count
    return metrics


def _sentence_step(student, teacher):
    def eval_step(params, teacher_params, batch):
        inputs = batch["input_ids"], batch["attention_mask"]
        outputs = {"mask": batch["mask"],
                   "embedding": student.apply(params, *inputs, train=False).embedding}
        if teacher is not None:
            outputs["teacher_embedding"] = teacher.apply(teacher_params, *inputs,
                                                         train=False).embedding
        return outputs

    return eval_step


def _unit(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


def similarity_agreement(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """How the student's sentence geometry agrees with the teacher's, over all pairs i < j.

    spearman: rank correlation of the two models' cosine similarities; nn_agreement: fraction
    of sentences whose most similar other sentence is the same under both; cosine: mean cosine
    between the two models' embeddings of the same sentence (equal widths only).
    """
    student, teacher = _unit(student), _unit(teacher)
    student_sims, teacher_sims = student @ student.T, teacher @ teacher.T
    upper = np.triu_indices(len(student), k=1)
    np.fill_diagonal(student_sims, -np.inf)
    np.fill_diagonal(teacher_sims, -np.inf)
    metrics = {
        "spearman": float(scipy.stats.spearmanr(student_sims[upper], teacher_sims[upper])[0]),
        "nn_agreement": float(np.mean(student_sims.argmax(1) == teacher_sims.argmax(1))),
    }
    if student.shape == teacher.shape:
        metrics["cosine"] = float(np.mean(np.sum(student * teacher, axis=1)))
    return metrics


def _gather_masked(batch_outputs: Iterable[dict]) -> dict[str, np.ndarray]:
    """The per-example outputs of every batch, concatenated on the host, padding rows dropped."""
    fetched = [jax.device_get(outputs) for outputs in batch_outputs]
    mask = np.concatenate([np.asarray(o["mask"], bool) for o in fetched])
    return {key: np.concatenate([np.asarray(o[key], np.float64) for o in fetched])[mask]
            for key in fetched[0] if key != "mask"}


def _summarize_sentences(batch_outputs: Iterable[dict]) -> dict[str, float]:
    gathered = _gather_masked(batch_outputs)
    metrics = {"examples": len(gathered["embedding"])}
    if "teacher_embedding" in gathered:
        metrics.update(similarity_agreement(gathered["embedding"], gathered["teacher_embedding"]))
    return metrics


def _lm_step(student, teacher, lm_sampling, eos_id):
    def weighted_nll(logits, sequence, weights):
        return jnp.sum(losses.token_nll(logits, sequence.targets) * weights)

    def eval_step(params, teacher_params, batch):
        rows = batch["mask"].astype(jnp.float32)[:, None]
        real = lm.real_text(batch)
        weights = real.loss_mask * rows
        logits = lm.logits(student, params, real, train=False)
        sums = {"rows": jnp.sum(rows), "count": jnp.sum(weights),
                "nll": weighted_nll(logits, real, weights)}
        if teacher is None:
            return sums
        teacher_logits = lm.logits(teacher, teacher_params, real, train=False)
        agree = jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)
        sums.update(teacher_nll=weighted_nll(teacher_logits, real, weights),
                    agree=jnp.sum(agree * weights))
        if "prompt" in batch:
            sampled = lm.sample_continuations(student, params, batch, jax.random.key(0),
                                              lm_sampling, eos_id)
            on_policy = lm.with_continuation(batch, sampled.tokens, sampled.mask)
            sampled_weights = on_policy.loss_mask * rows
            sums.update(sampled_count=jnp.sum(sampled_weights), sampled_teacher_nll=weighted_nll(
                lm.logits(teacher, teacher_params, on_policy, train=False), on_policy,
                sampled_weights))
        return sums

    return eval_step


def _summarize_lm(batch_sums: Iterable[dict]) -> dict[str, float]:
    totals = _totals(batch_sums)
    count = max(totals["count"], 1.0)
    metrics = {"loss": totals["nll"] / count, "tokens": int(totals["count"]),
               "examples": int(totals["rows"])}
    if "teacher_nll" in totals:
        metrics.update(teacher_loss=totals["teacher_nll"] / count,
                       teacher_agreement=totals["agree"] / count)
    if "sampled_count" in totals:
        sampled = max(totals["sampled_count"], 1.0)
        metrics.update(teacher_nll_of_samples=totals["sampled_teacher_nll"] / sampled,
                       sample_tokens=int(totals["sampled_count"]))
    return metrics


@functools.cache
def classifier_features(classifier_dir: str, image_shape: tuple[int, ...] | None = None
                        ) -> Callable[[jax.Array], jax.Array]:
    """`features(images)`: the penultimate features of the classifier run in `classifier_dir`
    (an MLP such as `hinton_teacher_digits`) for generated images in [-1, 1], which it reads as
    pixels in [0, 1]. Loaded once per directory; `image_shape` is checked against its inputs."""
    classifier = loading.run(classifier_dir)
    inputs = data.spec(classifier.run_config.data).inputs
    trained_on = next(iter(inputs.values()))[0]
    if image_shape is not None and tuple(trained_on) != tuple(image_shape):
        raise DistillError(
            f"config.generation.fd_classifier={classifier_dir} reads images of shape"
            f" {tuple(trained_on)} but this run generates {tuple(image_shape)}; give a"
            " classifier trained on this data (or leave fd_classifier empty)")
    apply = functools.partial(classifiers.penultimate_features, classifier.module,
                              classifier.params)
    return lambda images: apply(jnp.clip((images + 1) / 2, 0, 1))


def _generation_step(student, config, num_classes, example_shape):
    """Samples as many points as the batch has, from noise keyed by the batch's first row index
    (so every evaluation of a split draws the same noise), beside the real ones (and both in
    the FD classifier's features when the run names one)."""
    param = parameterizations.parameterization(config.diffusion)
    generation = config.generation
    sampling.check_sampling(param, generation.sampler, generation.steps, tuple(generation.times))
    features = (classifier_features(generation.fd_classifier, example_shape)
                if generation.get("fd_classifier") else None)

    def eval_step(params, teacher_params, batch):
        del teacher_params  # the metrics compare the student with the data
        net = sampling.network(student, params, generation.guidance, num_classes or 0)
        rng = jax.random.fold_in(jax.random.key(config.seed), batch["index"][0])
        samples = sampling.sample(param, net, rng, batch["x"].shape, batch.get("label"),
                                  sampler=generation.sampler, steps=generation.steps,
                                  times=tuple(generation.times))
        outputs = {"samples": samples, "real": batch["x"], "mask": batch["mask"]}
        if features is not None:
            outputs.update(sample_features=features(jnp.nan_to_num(samples)),
                           real_features=features(batch["x"]))
        return outputs

    return eval_step


def _summarize_generation(batch_outputs: Iterable[dict]) -> dict[str, float]:
    gathered = _gather_masked(batch_outputs)
    finite = np.all(np.isfinite(gathered["samples"].reshape(len(gathered["samples"]), -1)), -1)
    metrics = {"swd": distances.sliced_wasserstein(np.nan_to_num(gathered["samples"]),
                                                   gathered["real"])}
    if "sample_features" in gathered:
        metrics["fd"] = distances.frechet_distance(gathered["sample_features"],
                                                   gathered["real_features"])
    return {**metrics, "nonfinite_samples": int(np.sum(~finite)), "examples": len(finite)}


_STEPS = {"classification": _classification_step, "sentences": _sentence_step}
_SUMMARIES = {"classification": _summarize_classification, "sentences": _summarize_sentences,
              "lm": _summarize_lm, "generation": _summarize_generation}


def make_eval_step(dataset, student, teacher, config):
    """`eval_step(params, teacher_params, batch) -> outputs` for the dataset's task.

    The run's config says how an LM student samples continuations of eval prompts
    (config.sampling) and how a generative model samples (config.diffusion, .generation)."""
    if dataset.task == "lm":
        return _lm_step(student, teacher, config.sampling, dataset.special_ids.eos_ids)
    if dataset.task == "generation":
        return _generation_step(student, config, dataset.num_classes,
                                dataset.inputs["x"][0])
    return _STEPS[dataset.task](student, teacher)


def summarize(dataset, batch_outputs: Iterable[dict]) -> dict[str, float]:
    """Split-level metrics from the eval step's per-batch outputs."""
    return _SUMMARIES[dataset.task](batch_outputs)


def evaluate_split(run, state, split: str) -> dict[str, float]:
    """Exact metrics of `state` on a whole split of the run's dataset."""
    batches = data.eval_batches(run.config.data, split, run.config.eval_batch_size)
    return summarize(run.dataset, (run.eval_step(state, run.shard_batch(batch))
                                   for batch in batches))
