"""The Llama LM against transformers' LlamaForCausalLM, its KV cache, packing and sharding."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill import config as config_lib
from jaxdistill import models, sharding
from jaxdistill.errors import DistillError
from jaxdistill.models.llama import Llama, head_matrix, logits_from_hidden

TINY = dict(vocab_size=128, num_layers=2, width=64, num_heads=4, num_kv_heads=2, mlp_dim=96,
            max_length=64)


def _save_hf_llama(path, randomized, tied: bool, **save_kwargs) -> str:
    """A randomly initialised LlamaForCausalLM saved as safetensors; norms get random scales
    too, so that a mis-mapped norm would show in the logits."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tied)
    model = randomized(transformers.LlamaForCausalLM(config))
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    return str(path)


def _hf_logits(path: str, ids: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.fixture(scope="module")
def hf_tied(tmp_path_factory, randomized):
    return _save_hf_llama(tmp_path_factory.mktemp("tied"), randomized, tied=True)


def _init(model: Llama, seed: int = 0):
    init = jax.jit(functools.partial(model.init, train=False))
    return nn.unbox(init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)))


@functools.partial(jax.jit, static_argnames=("model", "train", "method"))
def _apply(model, params, *args, train=False, method=None, **kwargs):
    """`model.apply`, jitted: op-by-op dispatch would make these tests several times slower."""
    return model.apply(params, *args, train=train, method=method, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    model = Llama(**TINY)
    return model, _init(model)


def _ids(shape, seed=0, vocab=128):
    return np.random.default_rng(seed).integers(1, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("layout", ["tied", "untied", "untied_sharded_files"])
def test_logits_match_transformers(tmp_path, hf_tied, randomized, layout):
    path = hf_tied if layout == "tied" else _save_hf_llama(
        tmp_path, randomized, tied=False,
        **({"max_shard_size": "100KB"} if layout == "untied_sharded_files" else {}))
    if layout == "untied_sharded_files":
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    loaded = models.from_pretrained(path)
    assert loaded.model_config["tie_embeddings"] == (layout == "tied")
    assert loaded.model_config["rope_theta"] == 500.0 and loaded.tokenizer is None
    ids = _ids((2, 24))
    ours = _apply(loaded.module, {"params": loaded.params}, ids, train=False)
    theirs = _hf_logits(path, ids)
    assert ours.dtype == jnp.float32
    assert np.abs(np.asarray(ours) - theirs).max() < 1e-4


def test_pretrained_config_builds_the_same_model(hf_tied):
    loaded = models.from_pretrained(hf_tied)
    rebuilt = models.build(ml_collections.ConfigDict(loaded.model_config))
    ids = _ids((1, 8))
    np.testing.assert_array_equal(
        _apply(rebuilt, {"params": loaded.params}, ids, train=False),
        _apply(loaded.module, {"params": loaded.params}, ids, train=False))


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}},
     "rope_type 'dynamic'.*supported: default, linear, llama3"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_type 'yarn'"),
    ({"attention_bias": True}, r"lacks 8 tensors .*_proj.bias"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"intermediate_size": 128}, r"down_proj.weight has shape \(64, 96\) but config.json"
                                 r" \(intermediate_size=128, hidden_size=64\) implies \(64, 128\)"),
    ({"num_key_value_heads": 4}, r"k_proj.weight .* \(num_key_value_heads=4, head_dim=16"),
    ({"num_hidden_layers": 3}, r"lacks 9 tensors .* num_hidden_layers \(3\)"),
    ({"num_hidden_layers": 1}, r"does not account for 9 tensors .* num_hidden_layers \(1\)"),
    ({"tie_word_embeddings": False}, r"lacks 1 tensors .*lm_head.weight"),
])
def test_mismatched_config_is_a_clear_error(hf_with_config, hf_tied, change, message):
    with pytest.raises(DistillError, match=message):
        models.from_pretrained(hf_with_config(hf_tied, **change))


def test_bad_shapes_in_config_are_clear_errors():
    with pytest.raises(DistillError, match="not a multiple of num_kv_heads"):
        _init(Llama(**{**TINY, "num_kv_heads": 3}))
    with pytest.raises(DistillError, match="exceeds max_length 64"):
        Llama(**TINY).init(jax.random.key(0), jnp.zeros((1, 65), jnp.int32), train=False)
    with pytest.raises(DistillError, match="bad fields for model 'llama'"):
        models.build(ml_collections.ConfigDict({"model": "llama", "hidden_size": 64}))


def test_params_tree_and_head_matrix(tiny):
    model, params = tiny
    p = params["params"]
    assert sorted(p) == ["embed", "final_norm", "layer_0", "layer_1"]
    attention = p["layer_0"]["attention"]
    assert attention["query"]["kernel"].shape == (64, 4, 16)
    assert attention["key"]["kernel"].shape == (64, 2, 16)
    assert attention["output"]["kernel"].shape == (4, 16, 64)
    assert p["layer_0"]["mlp"]["down"]["kernel"].shape == (96, 64)
    assert jax.tree.leaves(jax.tree.map(lambda x: x.dtype, params)) == [jnp.float32] * len(
        jax.tree.leaves(params))
    ids = _ids((2, 10))
    hidden = _apply(model, params, ids, train=False, method="hidden")
    np.testing.assert_allclose(logits_from_hidden(hidden, head_matrix(params)),
                               _apply(model, params, ids, train=False), rtol=1e-6)
    untied = Llama(**{**TINY, "tie_embeddings": False})
    untied_params = jax.eval_shape(lambda: _init(untied))
    assert untied_params["params"]["head"]["embedding"].shape == (128, 64)
    assert jax.eval_shape(head_matrix, untied_params).shape == (64, 128)


def test_kv_cache_prefill_then_decode_equals_full_forward(tiny):
    model, params = tiny
    ids = _ids((2, 12))
    full = _apply(model, params, ids, train=False)
    cache = model.init_cache(2, 16)
    logits, cache = _apply(model, params, ids[:, :5], train=False, cache=cache)
    steps = [logits]
    for t in range(5, 12):
        logits, cache = _apply(model, params, ids[:, t:t + 1], train=False, cache=cache)
        steps.append(logits)
    assert int(cache.index) == 12 and cache.keys[0].shape == (2, 16, 2, 16)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_packed_row_equals_each_document_alone(tiny):
    model, params = tiny
    first, second = _ids((1, 5), seed=1), _ids((1, 4), seed=2)
    packed = np.concatenate([first, second, np.zeros((1, 3), np.int32)], axis=1)
    segment_ids = np.array([[1] * 5 + [2] * 4 + [0] * 3])
    logits = _apply(model, params, packed, segment_ids=segment_ids, train=False)
    np.testing.assert_allclose(logits[:, :5], _apply(model, params, first, train=False), atol=1e-5)
    np.testing.assert_allclose(logits[:, 5:9], _apply(model, params, second, train=False),
                               atol=1e-5)
    assert np.isfinite(np.asarray(logits)).all()  # padding rows attend nothing, yet stay finite


def test_left_padded_row_equals_the_unpadded_one(tiny):
    model, params = tiny
    ids = _ids((1, 6))
    padded = np.concatenate([np.zeros((1, 3), np.int32), ids], axis=1)
    mask = np.array([[0] * 3 + [1] * 6])
    logits = _apply(model, params, padded, mask, train=False)
    np.testing.assert_allclose(logits[:, 3:], _apply(model, params, ids, train=False), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
    _, params = tiny
    model = Llama(**TINY, dtype="bfloat16")
    ids = _ids((2, 10))
    logits = _apply(model, params, ids, train=False)
    assert logits.dtype == jnp.float32
    assert _apply(model, params, ids, train=False, method="hidden").dtype == jnp.bfloat16
    reference = _apply(Llama(**TINY), params, ids, train=False)
    assert np.abs(np.asarray(logits - reference)).max() < 0.05 * np.abs(reference).max()


def test_attention_dropout_only_in_training(tiny):
    _, params = tiny
    model = Llama(**{**TINY, "dropout": 0.5})
    ids = _ids((1, 8))
    rngs = {"dropout": jax.random.key(1)}
    trained = _apply(model, params, ids, train=True, rngs=rngs)
    assert not np.allclose(trained, _apply(model, params, ids, train=False))
    np.testing.assert_array_equal(_apply(model, params, ids, train=False, rngs=rngs),
                                  _apply(model, params, ids, train=False))


def test_logical_sharding_with_default_rules_matches_unsharded(tiny):
    model, params = tiny
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    boxed = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                           jnp.zeros((1, 4), jnp.int32))
    shardings = sharding.param_shardings(boxed, mesh, config_lib.base().sharding.student,
                                         "student")
    specs = jax.tree.map(lambda s: s.spec, shardings["params"],
                         is_leaf=lambda s: isinstance(s, NamedSharding))
    assert specs["embed"]["embedding"] == P("tensor", "fsdp")
    assert specs["layer_0"]["attention"]["query"]["kernel"] == P("fsdp", "tensor", None)
    assert specs["layer_0"]["attention"]["key"]["kernel"] == P("fsdp", "tensor", None)
    assert specs["layer_0"]["attention"]["output"]["kernel"] == P("tensor", None, "fsdp")
    assert specs["layer_0"]["mlp"]["down"]["kernel"] == P("tensor", "fsdp")
    assert specs["final_norm"]["scale"] == P(None)
    sharded_params = jax.device_put(params, shardings)
    ids = jax.device_put(_ids((4, 12)), sharding.batch_sharding(mesh))
    forward = jax.jit(functools.partial(model.apply, train=False))
    np.testing.assert_allclose(forward(sharded_params, ids),
                               _apply(model, params, ids, train=False), atol=1e-5)
