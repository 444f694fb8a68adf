"""Feature distillation: losses against float64 references, methods training from the MiniLM
teacher, layer-drop initialisation, and the errors a bad feature-KD config gets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import config as config_lib
from jaxdistill import evaluate, losses, train
from jaxdistill.errors import DistillError
from jaxdistill.run import build


def _rng(seed):
    return np.random.default_rng(seed)


def _padding_mask(rng, batch, seq):
    lengths = rng.integers(2, seq + 1, size=batch)
    lengths[0] = seq - 1  # at least one padded row
    return (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)


def test_mse_and_cosine_match_float64():
    rng = _rng(0)
    s, t = rng.normal(size=(2, 3, 5, 7)), rng.normal(size=(2, 3, 5, 7))
    s[..., 1], t[..., 1] = 0.0, s[..., 1]  # no degenerate rows, but not all generic either
    mask = rng.random((3, 5)) > 0.3
    ref_mse = np.sum(np.mean((s[0] - t[0]) ** 2, -1) * mask) / mask.sum()
    cos = np.sum(s[0] * t[0], -1) / np.linalg.norm(s[0], axis=-1) / np.linalg.norm(t[0], axis=-1)
    ref_cos = np.sum((1 - cos) * mask) / mask.sum()
    got_mse = losses.mse(jnp.float32(s[0]), jnp.float32(t[0]), mask)
    got_cos = losses.cosine_distance(jnp.float32(s[0]), jnp.float32(t[0]), mask)
    np.testing.assert_allclose(got_mse, ref_mse, rtol=1e-5)
    np.testing.assert_allclose(got_cos, ref_cos, rtol=1e-5)


def _np_relations(a, b, mask, heads):
    batch, seq = a.shape[:2]
    a, b = a.reshape(batch, seq, heads, -1), b.reshape(batch, seq, heads, -1)
    scores = np.einsum("bqrd,bkrd->brqk", a, b) / np.sqrt(a.shape[-1])
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    return probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("student_heads, teacher_heads, relation_heads",
                         [(4, 4, 4), (2, 6, 3), (4, 6, 2)])
def test_relation_kl_matches_float64(student_heads, teacher_heads, relation_heads):
    rng = _rng(student_heads * 10 + teacher_heads)
    batch, seq = 3, 6
    mask = _padding_mask(rng, batch, seq)
    student = [rng.normal(size=(batch, seq, student_heads, 12 // student_heads * 2))
               for _ in range(2)]
    teacher = [rng.normal(size=(batch, seq, teacher_heads, 24 // teacher_heads)) for _ in range(2)]
    p = _np_relations(*teacher, mask, relation_heads)
    q = _np_relations(*student, mask, relation_heads)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1).mean(1)
    reference = np.sum(kl * mask) / mask.sum()
    got = losses.relation_kl(tuple(map(jnp.float32, student)), tuple(map(jnp.float32, teacher)),
                             jnp.asarray(mask), relation_heads)
    np.testing.assert_allclose(got, reference, rtol=1e-4)


def test_relation_qk_with_own_heads_is_the_attention_map():
    rng = _rng(3)
    q, k = rng.normal(size=(2, 5, 4, 8)), rng.normal(size=(2, 5, 4, 8))
    mask = _padding_mask(rng, 2, 5)
    attention = jax.nn.softmax(
        jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
        + jnp.where(mask[:, None, None] > 0, 0, -1e9))
    got = jnp.exp(losses.relation_log_probs(jnp.float32(q), jnp.float32(k), jnp.asarray(mask), 4))
    np.testing.assert_allclose(got, attention, atol=1e-6)


def test_relation_kl_gradient_is_finite_under_padding():
    rng = _rng(4)
    mask = _padding_mask(rng, 2, 6)
    teacher = tuple(jnp.float32(rng.normal(size=(2, 6, 2, 4))) for _ in range(2))
    student = tuple(jnp.float32(rng.normal(size=(2, 6, 2, 4))) for _ in range(2))
    grads = jax.grad(lambda s: losses.relation_kl(s, teacher, jnp.asarray(mask), 2))(student)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # Padded keys never influence the loss.
    padded = mask == 0
    assert all(np.all(np.asarray(g)[padded] == 0.0) for g in grads)


def test_similarity_agreement():
    rng = _rng(5)
    teacher = rng.normal(size=(40, 8))
    same = evaluate.similarity_agreement(teacher * 3.0, teacher)  # scale does not matter
    assert same["spearman"] == pytest.approx(1.0) and same["nn_agreement"] == 1.0
    assert same["cosine"] == pytest.approx(1.0)
    unrelated = evaluate.similarity_agreement(rng.normal(size=(40, 8)), teacher)
    assert abs(unrelated["spearman"]) < 0.2 and unrelated["nn_agreement"] < 0.3
    noisy = evaluate.similarity_agreement(teacher + 0.3 * rng.normal(size=(40, 8)), teacher)
    assert unrelated["spearman"] < noisy["spearman"] < 1.0


@pytest.fixture
def minilm_config(smoke_config):
    def load(**updates):
        config = smoke_config("minilm_sentences")
        config.update({"total_steps": 3, "eval_every": 3})
        config.update_from_flattened_dict(updates)
        return config

    return load


# The README's example: every teacher weight split along its embedding axis over the whole mesh.
FSDP_ONLY_TEACHER = (("embed", ("fsdp", "tensor")), ("mlp", None), ("heads", None), ("vocab", None),
                     ("kv", None), ("position", None), ("token_type", None), ("norm", None),
                     ("projection", None))

_NARROW_STUDENT = {"student.hidden_size": 128, "student.num_heads": 4, "student.mlp_dim": 256,
                   "student.num_layers": 2, "student_init.teacher_layers": ()}


@pytest.mark.parametrize("updates", [
    {"method": "minilm"},
    {"method": "minilm", "loss.embedding_weight": 1.0, "loss.relations": ("qq", "kk", "vv")},
    {"method": "embedding_kd", "loss.embedding_distance": "cosine"},
    {"method": "hidden_mse"},
    {"method": "hidden_cosine", **_NARROW_STUDENT, "student.projection_dim": 384},
    {"method": "minilm", **_NARROW_STUDENT, "loss.relation_heads": 4},
], ids=["minilm", "minilm_v2_plus_embedding", "embedding_cosine", "hidden_mse",
        "hidden_cosine_projected", "minilm_relation_heads"])
def test_feature_method_reduces_its_loss(minilm_config, updates):
    """A few steps on one fixed batch lower the loss; the teacher is untouched."""
    config = minilm_config(**updates)
    config.optimizer.update({"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"})
    run = build(config)
    teacher_before = jax.tree.map(np.array, run.teacher_params)
    from jaxdistill import data

    batch = run.shard_batch(next(data.train_iterator(config.data, config.batch_size, 0)))
    state = run.init()
    first = None
    for _ in range(6):
        state, metrics = run.train_step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) < first
    jax.tree.map(np.testing.assert_array_equal, teacher_before, run.teacher_params)


def test_layer_drop_student_starts_from_the_teacher_layers(minilm_config):
    run = build(minilm_config())
    params = run.init().params["params"]
    teacher = run.teacher_params["params"]
    for student_layer, teacher_layer in enumerate((0, 2, 5)):
        jax.tree.map(np.testing.assert_array_equal, params[f"layer_{student_layer}"],
                     teacher[f"layer_{teacher_layer}"])
    np.testing.assert_array_equal(params["word_embeddings"]["embedding"],
                                  teacher["word_embeddings"]["embedding"])


def test_minilm_run_evaluates_agreement_with_the_teacher(minilm_config, tmp_path):
    summary = train.train_and_evaluate(minilm_config(), str(tmp_path), progress=False)
    validation = summary["eval"]["validation"]
    assert validation["examples"] > 100
    assert 0.0 < validation["spearman"] <= 1.0 and 0.0 < validation["nn_agreement"] <= 1.0


@pytest.mark.parametrize("updates, message", [
    ({"method": "hidden_mse", **_NARROW_STUDENT},
     "features are 128 wide and the teacher's 384; set config.student.projection_dim=384"),
    ({"method": "minilm", **_NARROW_STUDENT},
     "4 attention heads and the teacher 12; set config.loss.relation_heads"),
    ({"student_init.teacher_layers": (0, 5)},
     r"names 2 layers but the student has 3; set config.student.num_layers=2"),
    ({"student.num_layers": 2}, r"names 3 layers but the student has 2"),
    ({"student.mlp_dim": 512}, "copies teacher weights of shape"),
    ({"student.vocab_size": 1000},
     "the student has a vocabulary of 1000 tokens but the dataset has 30522"),
    ({"loss.relations": ("qx",)}, "must be pairs of q, k, v"),
    ({"loss.embedding_distance": "l1"}, "unknown config.loss.embedding_distance 'l1'"),
    ({"teacher.pretrained": "/nonexistent/model"}, "no pretrained model at"),
])
def test_bad_feature_config_is_a_clear_error(minilm_config, updates, message):
    with pytest.raises(DistillError, match=message):
        build(minilm_config(**updates))


def test_layer_copy_needs_a_transformer_teacher(smoke_config, teacher_dir):
    config = smoke_config("hinton_kd_digits")
    config.teacher.checkpoint = teacher_dir
    config.student_init.teacher_layers = (0,)
    with pytest.raises(DistillError, match="the teacher has no numbered layers"):
        build(config)
    config.method = "supervised"
    with pytest.raises(DistillError, match="teacher_layers needs a teacher"):
        build(config)


def test_text_dataset_needs_a_tokenizer(minilm_config):
    with pytest.raises(DistillError, match="needs config.data.tokenizer"):
        build(minilm_config(**{"data.tokenizer": ""}))


def test_minilm_config_variants_load():
    for scale in config_lib.SCALES:
        config = config_lib.load(f"minilm_sentences:{scale}")
        assert config.method == "minilm" and config.teacher.pretrained


def _loss_curve(config, devices=None, steps=3):
    from jaxdistill import data

    run = build(config, devices=devices)
    batches = data.train_iterator(config.data, config.batch_size, 0)
    state, curve = run.init(), []
    for _ in range(steps):
        state, metrics = run.train_step(state, run.shard_batch(next(batches)))
        curve.append(float(metrics["loss"]))
    return run, curve


def test_bert_student_shards_over_the_mesh_with_the_same_loss(minilm_config):
    """data2×fsdp2×tensor2 places heads, MLP and vocabulary on `tensor` and matches 1 device."""
    curves = []
    for mesh, devices in (({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
                          ({"data": 2, "fsdp": 2, "tensor": 2}, None)):
        config = minilm_config()
        config.mesh.update(mesh)
        run, curve = _loss_curve(config, devices)
        curves.append(curve)
    specs = jax.tree.map(lambda s: tuple(s.spec), run.state_shardings.params["params"])
    assert specs["layer_0"]["attention"]["query"]["kernel"] == ("fsdp", "tensor", None)
    assert specs["layer_0"]["intermediate"]["kernel"] == ("fsdp", "tensor")
    assert specs["word_embeddings"]["embedding"] == ("tensor", "fsdp")
    teacher_kernel = run.teacher_params["params"]["layer_5"]["output"]["kernel"]
    assert tuple(teacher_kernel.sharding.spec) == ("tensor", "fsdp")
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)


def test_teacher_takes_its_own_layout(minilm_config):
    """An inference-only teacher sharded over all 8 devices beside a replicated student."""
    _, reference = _loss_curve(minilm_config(), jax.devices()[:1])
    config = minilm_config(**{"mesh.fsdp": 4, "mesh.tensor": 2})
    config.sharding.student = tuple((axis, None) for axis, _ in config.sharding.student)
    config.sharding.teacher = FSDP_ONLY_TEACHER
    run, curve = _loss_curve(config)
    student = run.state_shardings.params["params"]["layer_0"]["intermediate"]["kernel"]
    teacher = run.teacher_params["params"]["layer_0"]["intermediate"]["kernel"]
    assert student.is_fully_replicated
    assert tuple(teacher.sharding.spec) == (("fsdp", "tensor"), None)
    np.testing.assert_allclose(curve, reference, rtol=1e-4)
