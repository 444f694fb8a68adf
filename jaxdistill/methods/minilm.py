"""MiniLM (Wang et al., 2020): deep self-attention distillation of one layer.

loss = mean over `loss.relations` of KL(teacher relation ‖ student relation)
       + loss.embedding_weight · embedding distance

Relations are softmax(A·Bᵀ/√d_r) maps between a layer's vectors over unpadded keys: `qk` is the
self-attention distribution (MiniLM's attention transfer) and `vv` the value relation; MiniLMv2
adds `qq` and `kk`. Heads are regrouped into `loss.relation_heads` relation heads, so teacher and
student may have different head counts (MiniLMv2); with the heads' own count (the default when
both models agree) `qk` is exactly the attention maps. `teacher_layer` / `student_layer` pick the
layers (MiniLM: the last of each; MiniLMv2 uses an upper-middle teacher layer for large teachers).
"""

from __future__ import annotations

from jaxdistill import losses
from jaxdistill.errors import DistillError
from jaxdistill.methods import Context, features, merge_settings, register

_VECTORS = {"q": "queries", "k": "keys", "v": "values"}


def _relation_heads(config, student, teacher) -> int:
    if config.loss.relation_heads:
        return config.loss.relation_heads
    if student.num_heads != teacher.num_heads:
        raise DistillError(
            f"the student has {student.num_heads} attention heads and the teacher"
            f" {teacher.num_heads}; set config.loss.relation_heads to a number of relation heads"
            " that divides both widths (MiniLMv2)")
    return teacher.num_heads


def _relations(config) -> tuple[str, ...]:
    relations = tuple(config.loss.relations)
    bad = [r for r in relations if len(r) != 2 or not set(r) <= set(_VECTORS)]
    if bad or not relations:
        raise DistillError(f"config.loss.relations {relations} must be pairs of q, k, v such as"
                           " ('qk', 'vv') (MiniLM) or ('qq', 'kk', 'vv') (MiniLMv2)")
    return relations


def _layer_vectors(out, layer: int, relation: str):
    return tuple(getattr(out, _VECTORS[name])[layer] for name in relation)


# relation_heads: heads the relations are split into (0: the models' own, which must agree);
# relations: which self-attention relations to match; embedding_weight: the weight of an added
# sentence-embedding loss; student_layer / teacher_layer: the layers whose relations match.
SETTINGS = merge_settings(features.SETTINGS, {"loss": {
    "relation_heads": 0, "relations": ("qk", "vv"), "embedding_weight": 0.0,
    "student_layer": -1, "teacher_layer": -1}})


@register("minilm", tasks=("sentences",), settings=SETTINGS)
def make_loss(ctx: Context):
    config, student, teacher = ctx.config, ctx.student, ctx.teacher
    heads = _relation_heads(config, student, teacher)
    relations = _relations(config)
    embedding_weight = config.loss.embedding_weight
    if embedding_weight:
        features.teacher_width_check(student, teacher)
    distance = features.embedding_distance(config)
    student_layer, teacher_layer = config.loss.student_layer, config.loss.teacher_layer

    def loss_fn(params, teacher_params, batch, rng, step):
        del step
        student_out, teacher_out = features.forward(student, teacher, params, teacher_params,
                                                    batch, rng)
        mask = batch["attention_mask"]
        metrics = {f"distill/{r}_kl": losses.relation_kl(
            _layer_vectors(student_out, student_layer, r),
            _layer_vectors(teacher_out, teacher_layer, r), mask, heads) for r in relations}
        loss = sum(metrics.values()) / len(relations)
        if embedding_weight:
            metrics["distill/embedding_loss"] = distance(student_out.embedding,
                                                         teacher_out.embedding)
            loss = loss + embedding_weight * metrics["distill/embedding_loss"]
        return loss, features.with_embedding_cosine(metrics, student_out, teacher_out)

    return loss_fn
