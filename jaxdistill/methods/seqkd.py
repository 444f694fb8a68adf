"""Sequence-level KD (Kim & Rush 2016): the student learns the teacher's own continuations.

Each step the teacher samples a continuation of every prompt (config.sampling: temperature,
top_k, top_p; temperature 0 is greedy, the simplest form of the paper's beam-search mode) and
the student takes the cross-entropy on those tokens.
"""

from __future__ import annotations

import jax

from jaxdistill.methods import Context, lm, register


@register("seqkd", tasks=("lm",), settings=lm.SETTINGS)
def make_loss(ctx: Context):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    eos_id = lm.eos_id(ctx)

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        sample_rng, dropout_rng = jax.random.split(rng)
        sampled = lm.sample_continuations(teacher, teacher_params, batch, sample_rng,
                                          config.sampling, eos_id)
        sequence = lm.with_continuation(batch, sampled.tokens, sampled.mask)
        logits = lm.logits(student, params, sequence, train=True, rng=dropout_rng)
        nll = lm.sequence_nll(logits, sequence)
        return nll, {"distill/sample_length": jax.numpy.mean(jax.numpy.sum(sampled.mask, -1)),
                     **lm.counted(sequence.loss_mask)}

    return loss_fn
