"""Logit distillation from offline top-k teacher targets: the teacher never runs in training.

The targets come from `jaxdistill cache-teacher` (config.data.teacher_cache): at each position,
the teacher's k most likely tokens and their log-probabilities. The student's distribution is
compared with them by τ² × `losses.sparse_divergence` (config.loss.divergence; config.loss.tail:
"bucket" keeps the teacher's remaining mass as one outcome, "renormalize" drops it), plus
`config.loss.ce_weight` × cross-entropy on the real text. With the same k this is exactly
`logit_kd` with config.loss.teacher_top_k, minus the teacher's forward pass.
"""

from __future__ import annotations

from jaxdistill.data import teacher_targets
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, lm, register


@register("cached_kd", teacher="none", tasks=("lm",), settings=lm.SETTINGS)
def make_loss(ctx: Context):
    config, student = ctx.config, ctx.student
    if not config.data.teacher_cache:
        raise DistillError("method 'cached_kd' reads offline teacher targets: set"
                           " config.data.teacher_cache to a `jaxdistill cache-teacher` directory")
    recorded = teacher_targets.metadata(config.data)
    divergence = lm.TokenDivergence(config.loss, student, None)
    temperature = divergence.divergence.temperature
    if recorded["temperature"] != temperature:
        raise DistillError(
            f"the teacher cache holds targets at temperature {recorded['temperature']} but"
            f" config.loss.temperature is {temperature}; set it to"
            f" {recorded['temperature']} or rebuild the cache")
    if config.data.train_split not in recorded["splits"]:
        raise DistillError(
            f"the teacher cache at {config.data.teacher_cache} has no targets for the training"
            f" split {config.data.train_split!r}; run `jaxdistill cache-teacher --split"
            f" {config.data.train_split} ...` into it")
    if recorded["vocab_size"] != config.student.vocab_size:
        raise DistillError(
            f"the teacher cache was made by a teacher with a vocabulary of"
            f" {recorded['vocab_size']} tokens but the student has {config.student.vocab_size};"
            " distil between models that share a tokenizer")
    ce_weight = config.loss.ce_weight

    def loss_fn(params, teacher_params, batch, rng, step):
        del teacher_params, step
        sequence = lm.real_text(batch)
        logits = lm.logits(student, params, sequence, train=True, rng=rng)
        distill = divergence.from_top_k(logits, batch["teacher_top_log_probs"],
                                        batch["teacher_top_indices"], sequence.loss_mask)
        nll = lm.sequence_nll(logits, sequence)
        return distill + ce_weight * nll, {"distill/divergence": distill, "distill/nll": nll,
                                           **lm.counted(sequence.loss_mask)}

    return loss_fn
