"""Feature distillation of encoders: hidden states (FitNets, DistilBERT) and sentence embeddings.

- `hidden_mse`: FitNets hints / TinyBERT hidden-state loss, MSE between mapped layers' states;
- `hidden_cosine`: DistilBERT's cosine loss between mapped layers' states;
- `embedding_kd`: MSE or cosine between pooled sentence embeddings (sentence-transformers'
  model distillation, Reimers & Gurevych 2020).

Student layer i is matched to teacher layer `loss.layer_map[i]` (indices into the hidden states,
0 being the embeddings). By default a layer-dropped student follows the layers it was copied
from (`student_init.teacher_layers`), and any other student maps uniformly (TinyBERT's
g(m) = m·L_t/L_s). When the widths differ, the student's `projection_dim` adds the learned
regressor that maps its features to the teacher's width.
"""

from __future__ import annotations

import jax

from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, register

_DISTANCES = {"mse": losses.mse, "cosine": losses.cosine_distance}
# layer_map: (student, teacher) hidden-state pairs, empty for the default map; embedding_distance:
# how sentence embeddings are compared (mse or cosine).
SETTINGS = {"loss": {"layer_map": (), "embedding_distance": "cosine"}}


def teacher_width_check(student, teacher) -> None:
    width = student.projection_dim or student.hidden_size
    if width != teacher.hidden_size:
        raise DistillError(
            f"the student's features are {width} wide and the teacher's {teacher.hidden_size};"
            f" set config.student.projection_dim={teacher.hidden_size} to learn a projection")


def default_layer_map(config, student, teacher) -> tuple[tuple[int, int], ...]:
    """(student, teacher) hidden-state index pairs, embeddings included."""
    if config.loss.layer_map:
        pairs = tuple(tuple(pair) for pair in config.loss.layer_map)
    elif config.student_init.teacher_layers:
        pairs = ((0, 0),) + tuple((i + 1, layer + 1)
                                  for i, layer in enumerate(config.student_init.teacher_layers))
    else:
        pairs = tuple((i, round(i * teacher.num_layers / student.num_layers))
                      for i in range(student.num_layers + 1))
    for s, t in pairs:
        if not (0 <= s <= student.num_layers and 0 <= t <= teacher.num_layers):
            raise DistillError(f"config.loss.layer_map pair ({s}, {t}) is out of range: the student"
                               f" has hidden states 0..{student.num_layers}, the teacher"
                               f" 0..{teacher.num_layers}")
    return pairs


def forward(student, teacher, params, teacher_params, batch, rng):
    """Student features (teacher-width, with dropout) and the frozen teacher's features."""
    inputs = batch["input_ids"], batch["attention_mask"]
    student_out = student.apply(params, *inputs, train=True, rngs={"dropout": rng},
                                method="distill_features")
    teacher_out = jax.lax.stop_gradient(teacher.apply(teacher_params, *inputs, train=False))
    return student_out, teacher_out


def embedding_distance(config):
    """The distance between sentence embeddings named by config.loss.embedding_distance."""
    distance = config.loss.embedding_distance
    if distance not in _DISTANCES:
        raise DistillError(f"unknown config.loss.embedding_distance {distance!r}; choose one of"
                           f" {', '.join(_DISTANCES)}")
    return _DISTANCES[distance]


def with_embedding_cosine(metrics: dict, student_out, teacher_out) -> dict:
    """Adds the mean student/teacher embedding cosine, when the widths allow comparing them."""
    if student_out.embedding.shape != teacher_out.embedding.shape:
        return metrics
    return {**metrics, "distill/embedding_cosine": 1.0 - losses.cosine_distance(
        student_out.embedding, teacher_out.embedding)}


def _hidden_state_method(name: str, distance):
    @register(name, tasks=("sentences",), settings=SETTINGS)
    def make_loss(ctx: Context):
        student, teacher = ctx.student, ctx.teacher
        teacher_width_check(student, teacher)
        pairs = default_layer_map(ctx.config, student, teacher)

        def loss_fn(params, teacher_params, batch, rng, step):
            del step
            student_out, teacher_out = forward(student, teacher, params, teacher_params, batch, rng)
            mask = batch["attention_mask"]
            per_layer = [distance(student_out.hidden_states[s], teacher_out.hidden_states[t], mask)
                         for s, t in pairs]
            loss = sum(per_layer) / len(per_layer)
            return loss, with_embedding_cosine({"distill/hidden_loss": loss}, student_out,
                                               teacher_out)

        return loss_fn

    return make_loss


_hidden_state_method("hidden_mse", losses.mse)
_hidden_state_method("hidden_cosine", losses.cosine_distance)


@register("embedding_kd", tasks=("sentences",), settings=SETTINGS)
def make_embedding_loss(ctx: Context):
    student, teacher = ctx.student, ctx.teacher
    teacher_width_check(student, teacher)
    distance = embedding_distance(ctx.config)

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        student_out, teacher_out = forward(student, teacher, params, teacher_params, batch, rng)
        loss = distance(student_out.embedding, teacher_out.embedding)
        return loss, with_embedding_cosine({"distill/embedding_loss": loss}, student_out,
                                           teacher_out)

    return loss_fn
