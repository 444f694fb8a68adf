"""Generalized knowledge distillation (Agarwal et al. 2024, "On-policy distillation of LMs").

With probability λ (config.loss.student_data_fraction) a batch's continuations are sampled
from the student itself (on-policy, config.sampling), otherwise the dataset's real ones are
used; the teacher then scores every token of those sequences and the student minimises the
divergence to it there (config.loss.divergence; the paper's generalized JSD(β) is `jsd` with
config.loss.beta). No gradient flows through the sampling, as in the paper. λ = 0 is supervised
KD, λ = 1 purely on-policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, lm, merge_settings, register

# λ: the share of batches whose continuations the student samples.
SETTINGS = merge_settings(lm.SETTINGS, {"loss": {"student_data_fraction": 0.0}})


@register("gkd", tasks=("lm",), settings=SETTINGS)
def make_loss(ctx: Context):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    divergence = lm.TokenDivergence(config.loss, student, teacher)
    fraction = config.loss.student_data_fraction
    if not 0.0 <= fraction <= 1.0:
        raise DistillError(f"config.loss.student_data_fraction (λ) must lie in [0, 1], got"
                           f" {fraction}")
    eos_id = lm.eos_id(ctx)

    def continuations(params, batch, rng):
        rng, coin_rng = jax.random.split(rng)

        def on_policy():
            sampled = lm.sample_continuations(student, params, batch, rng, config.sampling,
                                              eos_id)
            return sampled.tokens, sampled.mask.astype(batch["continuation_mask"].dtype)

        def real():
            return batch["continuation"], batch["continuation_mask"]

        if fraction in (0.0, 1.0):  # decided at trace time: no sampling code when never used
            return (on_policy() if fraction else real()), jnp.float32(fraction)
        use_student = jax.random.bernoulli(coin_rng, fraction)
        return jax.lax.cond(use_student, on_policy, real), use_student.astype(jnp.float32)

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        sample_rng, dropout_rng = jax.random.split(rng)
        (tokens, mask), on_policy = continuations(params, batch, sample_rng)
        sequence = lm.with_continuation(batch, tokens, mask)
        value = divergence(params, teacher_params, sequence, rng=dropout_rng)
        return value, {"distill/on_policy": on_policy, **lm.counted(sequence.loss_mask)}

    return loss_fn
