"""Every Llama-family importer against transformers on tiny random models: logits (single and
sharded files, float32 and bfloat16 weights), the export back to a Hugging Face directory, and
greedy KV-cache generation with left-padded prompts and several end tokens."""

import copy
import functools
import json
import os
import types

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from jaxdistill import config as config_lib
from jaxdistill import loading, models
from jaxdistill.errors import DistillError
from jaxdistill.generate import generate
from jaxdistill.models import hf_llama, pretrained
from jaxdistill.models.llama import head_matrix, logits_from_hidden

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=None,
            eos_token_id=None, pad_token_id=None)
WINDOW = 4  # shorter than the prompts and the generations below, so that windows matter
GEMMA = dict(query_pre_attn_scalar=24, sliding_window=WINDOW)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # short, medium and long waves
FAMILIES = {
    "llama3": (transformers.LlamaConfig, dict(rope_parameters=LLAMA3_ROPE)),
    "llama_linear_bias": (transformers.LlamaConfig, dict(
        rope_parameters={"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0},
        attention_bias=True, tie_word_embeddings=True)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=WINDOW)),
    "qwen2": (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=WINDOW,
                                             max_window_layers=1, tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(attention_bias=True)),
    "gemma2": (transformers.Gemma2Config, dict(**GEMMA, final_logit_softcapping=3.0,
                                               attn_logit_softcapping=2.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(
        **GEMMA, layer_types=["sliding_attention", "full_attention"], rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e3}})),
}
# Left-padded prompts of 6, 2 and 4 tokens (0 is padding).
PROMPTS = np.array([[5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 11, 12], [0, 0, 13, 14, 15, 16]])
NEW = 8


def _hf_model(family: str, randomized) -> transformers.PreTrainedModel:
    """A random float32 HF model; every parameter, norms and biases included, is drawn so that a
    mis-mapped tensor shows in the logits."""
    config_class, settings = FAMILIES[family]
    torch.manual_seed(0)
    config = config_class(**TINY, **settings)
    return randomized(
        transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, randomized):
    """family -> (its HF model, the directory it was saved to as one float32 file)."""
    out = {}
    for family in FAMILIES:
        model = _hf_model(family, randomized)
        path = str(tmp_path_factory.mktemp(family))
        model.save_pretrained(path, safe_serialization=True)
        out[family] = model, path
    return out


def _hf_logits(model, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        mask = None if attention_mask is None else torch.tensor(attention_mask)
        return model(torch.tensor(ids), attention_mask=mask).logits.float().numpy()


@functools.partial(jax.jit, static_argnames=("module", "method"))
def _apply(module, params, ids, method=None):
    return module.apply({"params": params}, ids, train=False, method=method)


def _ids(shape, seed=0):
    return np.random.default_rng(seed).integers(1, 128, shape).astype(np.int32)


def _max_error(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours) - theirs).max())


@pytest.mark.parametrize("layout", ["single", "sharded", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(saved, tmp_path, family, layout):
    model, path = saved[family]
    if layout == "sharded":
        model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="50KB")
        assert os.path.exists(tmp_path / "model.safetensors.index.json")
        path = str(tmp_path)
    elif layout == "bfloat16":
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
        path = str(tmp_path)
        # The reference: the same bfloat16-rounded weights, computed in float32.
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
    loaded = models.from_pretrained(path)
    ids = _ids((2, 12))
    ours = _apply(loaded.module, loaded.params, ids)
    assert _max_error(ours, _hf_logits(model, ids)) < 1e-4
    hidden = _apply(loaded.module, loaded.params, ids, method="hidden")
    np.testing.assert_allclose(
        logits_from_hidden(hidden, head_matrix(loaded.params), loaded.module.final_softcap),
        ours, rtol=1e-6, atol=1e-6)


def test_model_config_survives_a_run_config_json_round_trip(saved):
    """Run configs are written to config.json, where tuples become lists."""
    loaded = models.from_pretrained(saved["gemma3"][1])
    rebuilt = models.build(config_lib.from_json(config_lib.to_json(
        ml_collections.ConfigDict(loaded.model_config))))
    assert rebuilt == loaded.module and hash(rebuilt) == hash(loaded.module)


def test_sliding_window_hides_keys_window_slots_back(saved):
    """Changing a token shifts logits up to WINDOW - 1 positions later in a Mistral, no further."""
    loaded = models.from_pretrained(saved["mistral"][1])
    ids = _ids((1, 12))
    changed = ids.copy()
    changed[0, 3] = ids[0, 3] % 127 + 1
    moved = np.abs(np.asarray(_apply(loaded.module, loaded.params, changed)
                              - _apply(loaded.module, loaded.params, ids))).max(-1)[0]
    # One layer reaches WINDOW - 1 slots back; the second layer reaches as far again.
    assert (moved[3:3 + 2 * (WINDOW - 1) + 1] > 0).all() and (moved[3 + 2 * (WINDOW - 1) + 1:]
                                                             == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_flash_attention_equals_the_xla_path_on_packed_rows(saved, family):
    """Logits and parameter gradients through the flash kernel (Gemma 2's soft-capped scores
    take the XLA path) on rows packing two documents and padding."""
    loaded = models.from_pretrained(saved[family][1])
    ids = _ids((2, 16))
    segments = np.array([[1] * 9 + [2] * 7, [1] * 5 + [2] * 8 + [0] * 3], np.int32)

    def loss_and_grads(module):
        def loss(params):
            logits = module.apply({"params": params}, ids, segment_ids=segments, train=False)
            return jnp.sum(jnp.where(segments[..., None] > 0, logits, 0.0) ** 2), logits
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(loaded.params)

    (_, xla_logits), xla_grads = loss_and_grads(loaded.module)
    flash = models.from_pretrained(saved[family][1], attention="flash").module
    (_, flash_logits), flash_grads = loss_and_grads(flash)
    kept = segments > 0
    np.testing.assert_allclose(flash_logits[kept], xla_logits[kept], rtol=1e-5, atol=1e-5)
    for ours, xla in zip(jax.tree.leaves(flash_grads), jax.tree.leaves(xla_grads)):
        np.testing.assert_allclose(ours, xla, rtol=1e-4, atol=1e-4 * np.abs(xla).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_through_transformers(saved, tmp_path, family):
    model, path = saved[family]
    loaded = models.from_pretrained(path)
    config, tensors = hf_llama.to_hf(loaded.params, loaded.model_config)
    assert isinstance(tensors, types.GeneratorType)  # streamed, never all built at once
    assert config["architectures"] == [type(model).__name__]
    assert config["model_type"] == model.config.model_type
    save_file(dict(tensors), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    exported = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), attn_implementation="eager").eval()
    ids = _ids((2, 12), seed=1)
    assert _max_error(_hf_logits(exported, ids), _hf_logits(model, ids)) < 1e-5
    assert models.from_pretrained(str(tmp_path)).model_config == loaded.model_config


def test_export_of_a_student_trained_from_a_jaxdistill_config(tmp_path):
    """A config like configs/lm_teacher_docs.py's: only the original Llama fields, head_dim
    None, a bfloat16 compute dtype (no property of the exported weights)."""
    student = {"model": "llama", "vocab_size": 128, "num_layers": 2, "width": 64,
               "num_heads": 4, "num_kv_heads": 2, "head_dim": None, "mlp_dim": 96,
               "max_length": 64, "rope_theta": 10000.0, "norm_eps": 1e-6,
               "tie_embeddings": True, "dropout": 0.0, "dtype": "bfloat16"}
    module = models.build(ml_collections.ConfigDict({**student, "dtype": "float32"}))
    params = jax.jit(functools.partial(module.init, train=False))(
        jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    params = jax.tree.map(lambda p: 5.0 * p, flax.linen.unbox(params))
    config, tensors = hf_llama.to_hf(params, student)
    assert config["model_type"] == "llama" and config["head_dim"] == 16
    save_file(dict(tensors), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = _ids((2, 12))
    assert _max_error(_apply(module, params, ids), _hf_logits(exported, ids)) < 1e-4


def test_export_in_bfloat16_and_refusal_of_models_no_family_computes(saved, tmp_path):
    loaded = models.from_pretrained(saved["qwen3"][1])
    config, tensors = hf_llama.to_hf({"params": loaded.params}, loaded.model_config, "bfloat16")
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    assert {str(t.dtype) for _, t in tensors} == {"bfloat16"}
    with pytest.raises(DistillError, match=r"no Hugging Face family .* qkv_bias=True"):
        hf_llama.to_hf(loaded.params, {**loaded.model_config, "qk_norm": False,
                                        "output_bias": True, "qkv_bias": True,
                                        "layer_types": ("full_attention", "sliding_attention"),
                                        "sliding_window": 4})


def _right_padded(prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = (prompts != 0).sum(1)
    rows = [row[row != 0] for row in prompts]
    return np.array([np.pad(r, (0, prompts.shape[1] - r.size)) for r in rows]), lengths


def _hf_generate(model, eos: list[int] | None) -> np.ndarray:
    out = model.generate(torch.tensor(PROMPTS), attention_mask=torch.tensor(PROMPTS != 0),
                         max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                         eos_token_id=eos)
    return out[:, PROMPTS.shape[1]:].numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers(saved, family):
    model, path = saved[family]
    loaded = models.from_pretrained(path)
    out = generate(loaded.module, {"params": loaded.params}, *_right_padded(PROMPTS),
                   max_new_tokens=NEW, rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(out.tokens, _hf_generate(model, None))


def test_generation_stops_at_any_of_several_end_tokens(saved, tmp_path):
    model, path = saved["llama3"]
    loaded = models.from_pretrained(path)
    prompts, lengths = _right_padded(PROMPTS)
    free = np.asarray(generate(loaded.module, {"params": loaded.params}, prompts, lengths,
                               max_new_tokens=NEW, rng=jax.random.key(0),
                               temperature=0.0).tokens)
    eos = (int(free[0, 2]), int(free[1, 4]))
    out = generate(loaded.module, {"params": loaded.params}, prompts, lengths,
                   max_new_tokens=NEW, rng=jax.random.key(0), temperature=0.0, eos_id=eos)
    theirs = _hf_generate(model, list(eos))
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(np.isin(free[row], eos))
        end = hits[0] + 1 if hits.size else NEW
        np.testing.assert_array_equal(out.mask[row], np.arange(NEW) < end)
        np.testing.assert_array_equal(out.tokens[row, :end], theirs[row, :end])
        assert (np.asarray(out.tokens[row, end:]) == 0).all()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": list(eos)}))
    assert pretrained.eos_ids(str(tmp_path)) == eos
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert pretrained.eos_ids(str(tmp_path)) == (7,)


def test_old_style_configs_read_as_transformers_5_ones():
    llama = transformers.LlamaConfig(**TINY, rope_parameters=LLAMA3_ROPE).to_dict()
    old_llama = {**llama, "rope_theta": 500000.0, "rope_parameters": None,
                 "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}}
    assert hf_llama.llama_config(old_llama) == hf_llama.llama_config(llama)
    gemma = transformers.Gemma3TextConfig(
        **TINY, **GEMMA, sliding_window_pattern=2, rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}).to_dict()
    old_gemma = {**gemma, "rope_parameters": None, "layer_types": None, "rope_theta": 1e6,
                 "rope_local_base_freq": 1e4, "sliding_window_pattern": 2,
                 "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    fields = hf_llama.llama_config(old_gemma)
    assert fields == hf_llama.llama_config(gemma)
    assert fields["layer_types"] == ("sliding_attention", "full_attention")
    assert (fields["rope_type"], fields["rope_factor"], fields["rope_local_theta"]) == (
        "linear", 8.0, 1e4)
    qwen = transformers.Qwen2Config(**TINY).to_dict()
    assert hf_llama.llama_config({**qwen, "sliding_window": 32768, "use_sliding_window": False,
                                  "layer_types": None})["sliding_window"] is None


@pytest.mark.parametrize("change, message", [
    ({"model_type": "phi3"}, "model_type 'phi3'.*supported: bert, llama, mistral, qwen2, qwen3,"
                             " gemma2, gemma3_text"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
     "rope_type 'dynamic'.*supported: default, linear, llama3"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_type 'yarn'"),
    ({"hidden_act": "relu"}, "hidden_act='relu' .*supported: silu, gelu_pytorch_tanh"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"attention_bias": False}, r"does not account for 8 tensors .*_proj.bias"),
])
def test_unsupported_configs_are_clear_errors(saved, hf_with_config, change, message):
    with pytest.raises(DistillError, match=message):
        models.from_pretrained(hf_with_config(saved["llama_linear_bias"][1], **change))


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_disagreeing_with_config_names_tensor_and_shapes(saved, hf_with_config, family):
    path = hf_with_config(saved[family][1], intermediate_size=96)
    with pytest.raises(DistillError, match=r"(gate|up|down)_proj.weight has shape \((128, 64|64,"
                                           r" 128)\) but config.json \(intermediate_size=96,"
                                           r" hidden_size=64\) implies \((96, 64|64, 96)\)"):
        models.from_pretrained(path)


def test_missing_or_truncated_weights_are_clear_errors(saved, tmp_path):
    model = saved["qwen2"][0]
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="50KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(DistillError, match=r"truncated or not a safetensors file .*save it"):
        models.from_pretrained(str(tmp_path / "sharded"))
    shard.write_bytes(data[:4])
    with pytest.raises(DistillError, match="truncated or not a safetensors file"):
        models.from_pretrained(str(tmp_path / "sharded"))
    shard.unlink()
    with pytest.raises(DistillError, match=r"model-.*safetensors is missing; copy every file"):
        models.from_pretrained(str(tmp_path / "sharded"))


def _save_tokenizer(path, tokens: int) -> None:
    vocab = {f"t{i}": i for i in range(tokens)}
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), eos_token="t1",
        bos_token="t2").save_pretrained(path)


def test_embedding_rows_past_the_tokenizer_are_padding(saved, tmp_path):
    """Qwen2.5 pads 151,665 tokens to 151,936 rows: the model predicts the tokens only, and its
    export keeps every row."""
    model, path = saved["qwen2"]
    model.save_pretrained(tmp_path, safe_serialization=True)
    _save_tokenizer(tmp_path, 100)  # of the 128 rows
    loaded = models.from_pretrained(str(tmp_path))
    assert (loaded.model_config["vocab_size"], loaded.model_config["embedding_rows"]) == (100, 128)
    ids = _ids((2, 12)) % 100
    ours = _apply(loaded.module, loaded.params, ids)
    assert ours.shape[-1] == 100
    assert _max_error(ours, _hf_logits(model, ids)[..., :100]) < 1e-4
    config, tensors = hf_llama.to_hf(loaded.params, loaded.model_config)
    assert config["vocab_size"] == 128
    assert dict(tensors)["model.embed_tokens.weight"].shape == (128, TINY["hidden_size"])


def test_a_tokenizer_larger_than_the_embedding_is_refused(saved, tmp_path):
    model, _ = saved["llama3"]
    model.save_pretrained(tmp_path, safe_serialization=True)
    _save_tokenizer(tmp_path, 130)
    with pytest.raises(DistillError, match=r"tokenizer gives ids up to 129 but the model's"
                                           r" embedding has 128 rows"):
        models.from_pretrained(str(tmp_path))


def test_loading_places_each_tensor_in_its_sharding(saved):
    """`loading.pretrained` puts every tensor on its devices as it is converted: the params come
    back in the layout `place` asks for, equal to the host import."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("model",))
    by_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(boxed):
        return jax.tree.map(lambda x: by_rows if x.shape[0] % 8 == 0 else replicated,
                            flax.linen.unbox(boxed))

    path = saved["qwen2"][1]
    placed = loading.pretrained(path, (np.zeros((1, 4), np.int32),), place).params["params"]
    on_host = models.from_pretrained(path).params
    for ours, theirs in zip(jax.tree.leaves(placed), jax.tree.leaves(on_host)):
        assert ours.sharding == (by_rows if theirs.shape[0] % 8 == 0 else replicated)
        np.testing.assert_array_equal(ours, theirs)
