"""What the language-model methods share: sequences to score, model passes, the token divergence.

A batch is either packed text (`input_ids`, `targets`, `segment_ids`, `positions`, `loss_mask`)
or prompt/continuation pairs (`prompt`, `prompt_mask` left-padded; `continuation`,
`continuation_mask`). Every method scores a `Sequence`: the tokens a model reads and, at each
position, the next token and whether it counts. On-policy methods build theirs from the prompt
and a continuation the student (or teacher) sampled.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, Float, Int

from jaxdistill import generate as generate_lib
from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.kernels import fused_linear_divergence
from jaxdistill.methods import LOSS_WEIGHT, Context
from jaxdistill.models import llama

# The settings every LM method shares. loss: the token divergence (fkl, rkl, jsd, tvd, skl,
# srkl) at `temperature`, with jsd's `beta` and the skew KLs' `skew`; `fused` computes it with
# the fused linear-divergence kernel (`fused_implementation`: auto, xla or pallas);
# `teacher_top_k` > 0 keeps only the teacher's top-k tokens, `tail` saying how the rest of its
# mass counts (losses.sparse_divergence); `ce_weight` adds cross-entropy on the real text.
# sampling: how continuations are sampled (on-policy methods, seqkd, evaluation), separate from
# the loss's temperature.
SETTINGS = {
    "loss": {"temperature": 1.0, "divergence": "fkl", "beta": 0.5, "skew": 0.1, "fused": False,
             "fused_implementation": "auto", "teacher_top_k": 0, "tail": "bucket",
             "ce_weight": 0.0},
    "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
}


class Sequence(NamedTuple):
    input_ids: Int[Array, "batch length"]
    segment_ids: Int[Array, "batch length"]   # 0 = padding
    targets: Int[Array, "batch length"]       # the next token at each position
    loss_mask: Float[Array, "batch length"]   # 1 where predicting `targets` counts


def real_text(batch: dict) -> Sequence:
    """The batch's own text: packed rows, or each prompt followed by its real continuation."""
    if "prompt" in batch:
        return with_continuation(batch, batch["continuation"], batch["continuation_mask"])
    return Sequence(batch["input_ids"], batch["segment_ids"], batch["targets"],
                    batch["loss_mask"].astype(jnp.float32))


def with_continuation(batch: dict, continuation: Array, continuation_mask: Array) -> Sequence:
    """The (left-padded) prompt then `continuation`; the loss counts the continuation's tokens."""
    tokens = jnp.concatenate([batch["prompt"], continuation], axis=1)
    present = jnp.concatenate([batch["prompt_mask"], continuation_mask], axis=1).astype(jnp.int32)
    # Position t predicts token t + 1: the prompt's last position predicts the first new token.
    counts = jnp.concatenate([jnp.zeros_like(batch["prompt"][:, 1:]), continuation_mask], axis=1)
    return Sequence(tokens[:, :-1], present[:, :-1], tokens[:, 1:], counts.astype(jnp.float32))


def hidden_states(model: nn.Module, params, sequence: Sequence, *, train: bool,
                  rng: Array | None = None) -> Float[Array, "batch length width"]:
    rngs = {"dropout": rng} if train and rng is not None else None
    return model.apply(params, sequence.input_ids, segment_ids=sequence.segment_ids, train=train,
                       rngs=rngs, method="hidden")


def logits(model: nn.Module, params, sequence: Sequence, *, train: bool,
           rng: Array | None = None) -> Float[Array, "batch length vocab"]:
    hidden = hidden_states(model, params, sequence, train=train, rng=rng)
    return logits_from(model, hidden, model.output_head(params))


def logits_from(model: nn.Module, hidden: Array, head: Array) -> Float[Array, "... vocab"]:
    """The model's logits from its hidden states and output head (its soft-cap applied)."""
    return llama.logits_from_hidden(hidden, head, model.final_softcap)


def counted(mask: Array) -> dict[str, Array]:
    """The metric by which micro-batches weigh a mean over the tokens `mask` counts."""
    return {LOSS_WEIGHT: jnp.sum(mask.astype(jnp.float32))}


def sequence_nll(logits: Array, sequence: Sequence) -> Float[Array, ""]:
    """Mean next-token cross-entropy over the tokens the sequence counts."""
    return losses.cross_entropy(logits, sequence.targets, sequence.loss_mask)


def token_divergence(loss_config: ml_collections.ConfigDict) -> losses.Divergence:
    """config.loss's divergence, checked before compiling."""
    if loss_config.fused and loss_config.teacher_top_k:
        raise DistillError("config.loss.fused and config.loss.teacher_top_k exclude each other:"
                           " the fused kernel reads the teacher's whole head")
    return losses.Divergence(loss_config.divergence, loss_config.temperature, loss_config.beta,
                             loss_config.skew)


class TokenDivergence:
    """The divergence between student and teacher next-token distributions on a `Sequence`.

    config.loss: divergence (fkl, rkl, jsd, tvd, skl, srkl), temperature, beta (jsd), skew
    (skl/srkl's α), fused (the fused linear-divergence kernel: no [tokens, V] logits;
    fused_implementation picks its path), and teacher_top_k (the teacher known only by its
    top-k tokens, as with offline-cached targets). The value carries Hinton's τ² factor, so
    its gradient keeps its scale whatever the temperature (1 at τ = 1).
    """

    def __init__(self, loss_config: ml_collections.ConfigDict, student: nn.Module,
                 teacher: nn.Module | None):
        self.divergence = token_divergence(loss_config)
        self.fused = loss_config.fused
        self.fused_implementation = loss_config.fused_implementation
        self.scale = self.divergence.temperature ** 2
        self.top_k = loss_config.teacher_top_k
        self.tail = loss_config.tail
        self.student, self.teacher = student, teacher
        capped = [m for m in (student, teacher) if m is not None and m.final_softcap]
        if self.fused and capped:
            raise DistillError("config.loss.fused cannot apply the logit soft-capping of a"
                               " Gemma-style model (final_softcap); set config.loss.fused=False")

    def hidden_and_heads(self, params, teacher_params, sequence: Sequence, rng: Array):
        """(student hidden, student head, teacher hidden, teacher head), the teacher's frozen."""
        student_hidden = hidden_states(self.student, params, sequence, train=True, rng=rng)
        teacher_hidden = hidden_states(self.teacher, teacher_params, sequence, train=False)
        return (student_hidden, self.student.output_head(params),
                jax.lax.stop_gradient(teacher_hidden),
                jax.lax.stop_gradient(self.teacher.output_head(teacher_params)))

    def from_hidden(self, student_hidden, student_head, teacher_hidden, teacher_head,
                    mask: Array) -> Array:
        """τ² × the mean divergence over the tokens `mask` counts, from hidden states and heads."""
        if not self.fused:
            return self.from_logits(logits_from(self.student, student_hidden, student_head),
                                    logits_from(self.teacher, teacher_hidden, teacher_head), mask)
        return self.scale * fused_linear_divergence(
            student_hidden.reshape(-1, student_hidden.shape[-1]), student_head,
            teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), teacher_head, self.divergence,
            mask=mask.reshape(-1), implementation=self.fused_implementation)

    def from_logits(self, student_logits, teacher_logits, mask: Array) -> Array:
        """τ² × the mean divergence over the tokens `mask` counts, from both models' logits."""
        if self.top_k:
            return self.from_top_k(student_logits, *losses.top_k_targets(
                teacher_logits, self.top_k, temperature=self.divergence.temperature), mask)
        return self.scale * losses.divergence(student_logits, teacher_logits, self.divergence,
                                              mask=mask)

    def from_top_k(self, student_logits, top_log_probs, top_indices, mask: Array) -> Array:
        """τ² × the mean divergence to a teacher known by its top-k log-probabilities (computed
        here, or cached offline), the rest of its mass counted as config.loss.tail says."""
        return self.scale * losses.sparse_divergence(
            student_logits, top_log_probs, top_indices, self.divergence, mask=mask,
            tail=self.tail)

    def __call__(self, params, teacher_params, sequence: Sequence, *, rng: Array,
                 mask: Array | None = None) -> Array:
        mask = sequence.loss_mask if mask is None else mask
        return self.from_hidden(*self.hidden_and_heads(params, teacher_params, sequence, rng),
                                mask)


def sample_continuations(model: nn.Module, params, batch: dict, rng: Array,
                         sampling: ml_collections.ConfigDict,
                         eos_id: int | tuple[int, ...] | None
                         ) -> generate_lib.GenerateOutput:
    """`continuation_length` tokens sampled after each prompt, outside the gradient."""
    params = jax.lax.stop_gradient(params)
    return generate_lib.generate(
        model, params, *generate_lib.right_pad(batch["prompt"], batch["prompt_mask"]),
        max_new_tokens=batch["continuation"].shape[1], rng=rng,
        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
        eos_id=eos_id)


def eos_id(ctx: Context) -> tuple[int, ...]:
    """The ids that end sampled continuations (every eos id of the tokenizer, e.g. Llama 3
    Instruct's <|eot_id|> and <|end_of_text|>); the data must be prompts."""
    if ctx.dataset.format != "prompts":
        raise DistillError(f"method {ctx.config.method!r} samples continuations of prompts: set"
                           " config.data.format='prompts' on a language-model dataset")
    return ctx.dataset.special_ids.eos_ids
