"""LM distillation methods: each trains from the CLI, and their losses mean what they claim."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import cache_teacher, cli, data, generate, loading, methods, train
from jaxdistill.errors import DistillError
from jaxdistill.methods import adaspec, lm, taid
from jaxdistill.run import build

CLI_ROWS = [
    ("sft", []),
    ("seqkd", []),
    ("logit_kd", ["--config.loss.divergence=srkl"]),
    ("logit_kd", ["--config.loss.divergence=jsd", "--config.loss.fused=True"]),
    ("logit_kd", ["--config.loss.teacher_top_k=8", "--config.loss.ce_weight=0.5"]),
    ("taid", ["--config.loss.divergence=fkl", "--config.loss.fused=True"]),
    ("gkd", ["--config.loss.student_data_fraction=1.0"]),
    ("gkd", []),
    ("adaspec", ["--config.loss.divergence=fkl"]),
    ("distillspec", ["--config.loss.divergence=tvd", "--config.loss.student_data_fraction=1.0"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, flags", CLI_ROWS)
def test_every_lm_method_trains_from_the_cli(method, flags, tmp_path, data_dir, lm_teacher_dir,
                                             capsys):
    workdir = tmp_path / "run"
    cli.main(["train", "--config", "gkd_docs:smoke", "--workdir", str(workdir),
              f"--config.method={method}", f"--config.data.data_dir={data_dir}",
              f"--config.teacher.checkpoint={lm_teacher_dir}",
              "--config.checkpoint.async_save=False",
              *flags])
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_lines = [line for line in lines if "split" not in line]
    assert all(np.isfinite(line["loss"]) for line in train_lines)
    final_eval = [line for line in lines if line.get("split") == "validation"][-1]
    teacher_metrics = ("teacher_agreement", "teacher_nll_of_samples") if method != "sft" else ()
    for key in ("loss", *teacher_metrics):
        assert np.isfinite(final_eval[key]), key
    assert "validation" in capsys.readouterr().out


def _first_loss(config) -> float:
    return _first_loss_of(build(config))


def _first_loss_of(run) -> float:
    config = run.config
    batch = run.shard_batch(next(data.train_iterator(config.data, config.batch_size, config.seed)))
    return float(run.train_step(run.init(), batch)[1]["loss"])


@pytest.mark.parametrize("method", ["logit_kd", "gkd"])
def test_flash_attention_in_both_models_gives_the_xla_loss(student_config, method):
    """The train step with the teacher and the student on the flash kernel (packed prompt and
    continuation rows, left padding, GQA; gkd also samples through the KV cache)."""
    runs = {attention: build(student_config(method=method, **{
        "student.attention": attention, "teacher.attention": attention}))
        for attention in ("xla", "flash")}
    assert runs["flash"].student.attention == runs["flash"].teacher.attention == "flash"
    np.testing.assert_allclose(_first_loss_of(runs["flash"]), _first_loss_of(runs["xla"]),
                               rtol=1e-5)


@pytest.mark.parametrize("divergence", ["jsd", "rkl"])
def test_fused_kernel_gives_the_same_loss(student_config, divergence):
    plain = _first_loss(student_config(method="logit_kd", **{"loss.divergence": divergence}))
    fused = _first_loss(student_config(method="logit_kd", **{"loss.divergence": divergence,
                                                             "loss.fused": True}))
    assert fused == pytest.approx(plain, rel=1e-5)


def test_gkd_without_student_data_is_supervised_kd(student_config):
    settings = {"loss.divergence": "jsd", "loss.beta": 0.3}
    gkd = _first_loss(student_config(method="gkd", **settings,
                                     **{"loss.student_data_fraction": 0.0}))
    supervised = _first_loss(student_config(method="logit_kd", **settings))
    assert gkd == pytest.approx(supervised, rel=1e-6)


def test_taid_interpolates_between_student_and_teacher(student_config):
    """t = 1 is forward KL to the teacher; t = 0 targets the student itself (loss 0)."""
    fkl = {"loss.divergence": "fkl"}
    plain = _first_loss(student_config(method="logit_kd", **fkl))
    at_teacher = _first_loss(student_config(
        method="taid", **fkl, **{"loss.taid.t_start": 0.999999, "loss.taid.t_end": 1.0}))
    at_student = _first_loss(student_config(method="taid", **fkl, **{"loss.taid.t_start": 0.0}))
    assert at_teacher == pytest.approx(plain, rel=1e-4)
    assert abs(at_student) < 1e-6


def test_taid_schedule_follows_its_rule():
    settings = methods.base_config("taid").loss.taid
    state = {"t": jnp.float32(0.4), "momentum": jnp.float32(0.0), "previous": jnp.float32(jnp.inf)}
    total = 10**6  # a slow linear schedule, so the adaptive steps show
    momentum = 0.0
    for step, objective in enumerate([2.0, 1.5, 1.0, 0.8, 0.8, float("nan"), 0.7]):
        new = taid.next_t(state, jnp.float32(objective), step, total, settings)
        linear = settings.t_start + (settings.t_end - settings.t_start) * (step + 1) / total
        if not np.isfinite(objective):
            assert new == state  # a bad step leaves the schedule alone
            continue
        t, previous = float(state["t"]), float(state["previous"])
        if step == 0:  # nothing to compare with yet: only the linear floor moves t
            want = max(linear, t)
        else:
            momentum = (settings.momentum * momentum
                        + (1 - settings.momentum) * (previous - objective) / previous)
            adaptive = t + settings.alpha / (1 + np.exp(-momentum)) * (1 - t)
            want = min(settings.t_end, max(linear, adaptive))
        assert float(new["t"]) == pytest.approx(want, rel=1e-6)
        assert float(new["t"]) >= linear - 1e-7
        state = new
    end = taid.next_t({"t": jnp.float32(1.0), "momentum": jnp.float32(5.0),
                       "previous": jnp.float32(1.0)}, jnp.float32(0.5), 10, total, settings)
    assert float(end["t"]) == settings.t_end


def test_adaspec_keeps_the_largest_gaps():
    scores = jnp.asarray([[0.5, 3.0, -1.0, 2.0], [9.0, 1.0, 4.0, 0.0]])
    mask = jnp.asarray([[1, 1, 1, 1], [0, 1, 1, 1]], jnp.float32)  # 9.0 is padding
    selected = adaspec.largest(scores, mask, 0.5)  # ceil(0.5 · 7) = 4 tokens
    np.testing.assert_array_equal(selected, [[0, 1, 0, 1], [0, 1, 1, 0]])


def test_adaspec_keeping_everything_is_logit_kd(student_config):
    settings = {"loss.divergence": "fkl"}
    everything = _first_loss(student_config(method="adaspec", **settings,
                                            **{"loss.keep_fraction": 1.0}))
    assert everything == pytest.approx(
        _first_loss(student_config(method="logit_kd", **settings)), rel=1e-6)


def test_continuation_sequence_predicts_the_continuation():
    batch = {"prompt": jnp.asarray([[0, 0, 1, 7], [1, 5, 6, 7]]),
             "prompt_mask": jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 1]])}
    sequence = lm.with_continuation(batch, jnp.asarray([[8, 9, 0], [3, 2, 0]]),
                                    jnp.asarray([[1, 1, 0], [1, 1, 0]]))
    np.testing.assert_array_equal(sequence.input_ids, [[0, 0, 1, 7, 8, 9], [1, 5, 6, 7, 3, 2]])
    np.testing.assert_array_equal(sequence.targets, [[0, 1, 7, 8, 9, 0], [5, 6, 7, 3, 2, 0]])
    # Only the positions whose next token is a real continuation token count.
    np.testing.assert_array_equal(sequence.loss_mask, [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(sequence.segment_ids, [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def test_sampling_from_left_padded_prompts_matches_each_prompt_alone(student_config):
    config = student_config(method="gkd")
    run = build(config)
    params = run.teacher_params
    batch = {"prompt": jnp.asarray([[0, 0, 1, 40], [1, 50, 60, 70]]),
             "prompt_mask": jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 1]]),
             "continuation": jnp.zeros((2, 5), jnp.int32)}
    greedy = config.sampling.copy_and_resolve_references()
    greedy.temperature = 0.0
    sampled = lm.sample_continuations(run.teacher, params, batch, jax.random.key(0), greedy, None)
    alone = generate.generate(run.teacher, params, jnp.asarray([[1, 40]]), jnp.asarray([2]),
                              max_new_tokens=5, rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(sampled.tokens[0], alone.tokens[0])


def test_vocabulary_mismatch_fails_before_compiling(student_config):
    config = student_config(method="logit_kd", **{"student.vocab_size": 300})
    with pytest.raises(DistillError, match="vocabulary of 300 tokens"):
        build(config)


def test_sampling_methods_need_prompt_data(student_config):
    config = student_config(method="gkd", **{"data.format": "packed"})
    with pytest.raises(DistillError, match="prompts"):
        build(config)


def test_taid_rejects_other_divergences(student_config):
    with pytest.raises(DistillError, match="divergence='fkl'"):
        build(student_config(method="taid", **{"loss.divergence": "jsd"}))


def test_fused_and_top_k_exclude_each_other(student_config):
    with pytest.raises(DistillError, match="exclude each other"):
        build(student_config(method="logit_kd", **{"loss.fused": True, "loss.teacher_top_k": 4}))


def test_taid_state_is_checkpointed(student_config, tmp_path):
    config = student_config(method="taid", **{"loss.divergence": "fkl"})
    summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    lines = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    ts = [line["distill/taid_t"] for line in lines if "distill/taid_t" in line]
    assert ts[-1] > ts[0] >= config.loss.taid.t_start
    assert summary["step"] == config.total_steps


@pytest.fixture
def teacher_cache_dir(tmp_path, data_dir, lm_teacher_dir):
    out = tmp_path / "cache"
    cli.main(["cache-teacher", "--config", "gkd_docs:smoke", "--out", str(out), "--top_k", "8",
              f"--config.data.data_dir={data_dir}", f"--config.teacher.checkpoint={lm_teacher_dir}",
              "--config.loss.temperature=2.0"])
    return str(out)


def test_cached_teacher_targets_equal_the_online_top_k(student_config, teacher_cache_dir):
    online = _first_loss(student_config(method="logit_kd", **{
        "loss.teacher_top_k": 8, "loss.temperature": 2.0, "loss.divergence": "fkl"}))
    cached = _first_loss(student_config(method="cached_kd", **{
        "data.teacher_cache": teacher_cache_dir, "loss.temperature": 2.0,
        "loss.divergence": "fkl"}))
    assert cached == pytest.approx(online, rel=1e-5)


def test_teacher_cache_refuses_another_temperature_or_layout(student_config, teacher_cache_dir):
    with pytest.raises(DistillError, match="temperature 2.0"):
        build(student_config(method="cached_kd", **{"data.teacher_cache": teacher_cache_dir}))
    with pytest.raises(DistillError, match="prompt_length"):
        build(student_config(method="cached_kd", **{
            "data.teacher_cache": teacher_cache_dir, "loss.temperature": 2.0,
            "data.prompt_length": 12}))


def test_a_cache_without_the_training_split_is_refused(student_config, teacher_cache_dir):
    with pytest.raises(DistillError, match="--split validation"):
        build(student_config(method="cached_kd", **{
            "data.teacher_cache": teacher_cache_dir, "loss.temperature": 2.0,
            "data.train_split": "validation"}))


def test_adding_a_split_at_another_temperature_is_refused(student_config, teacher_cache_dir):
    config = student_config(**{"loss.temperature": 1.0})
    with pytest.raises(DistillError, match="other temperature"):
        cache_teacher.write(config, teacher_cache_dir, 8, split="validation")


def test_a_teacher_with_another_tokenizer_of_the_same_size_is_refused(student_config):
    config = student_config(**{"data.name": "bundled_sentences"})  # its own bpe, same size
    with pytest.raises(DistillError, match=r"the data's tokenizer \(bundled_sentences, bpe:\d+\)"
                                           r" is not the teacher's: token \d+ is"):
        build(config)


@pytest.mark.parametrize("method, updates", [
    ("logit_kd", {}), ("gkd", {"loss.student_data_fraction": 1.0})])  # gkd: on-policy samples
def test_padded_embedding_rows_never_reach_a_loss_or_a_sample(student_config, method, updates):
    """A student whose embedding has 64 rows past the shared tokenizer's tokens (the teacher has
    none): whatever those rows hold, the loss is the same."""
    config = student_config(method=method, **updates)
    vocab = config.student.vocab_size
    config.student.embedding_rows = vocab + 64
    run = build(config)
    batch = run.shard_batch(next(data.train_iterator(config.data, config.batch_size, config.seed)))

    def loss_with_padding(value: float) -> float:
        state = run.init()
        params = jax.tree.map(lambda x: x, state.params)
        params["params"]["embed"]["embedding"] = params["params"]["embed"]["embedding"].at[
            vocab:].set(value)
        return float(run.train_step(dataclasses.replace(state, params=params), batch)[1]["loss"])

    assert loss_with_padding(0.0) == loss_with_padding(1e3)
    logits = run.student.apply(run.init().params, batch["input_ids"] if "input_ids" in batch
                               else batch["prompt"], train=False)
    assert logits.shape[-1] == vocab


def test_a_student_can_start_from_an_earlier_run(student_config, lm_teacher_dir):
    """SFT first, then distil: student_init.checkpoint takes an earlier run's model and weights
    (here the teacher's own run, so the student starts with a zero divergence to it)."""
    config = student_config(method="logit_kd", **{"student_init.checkpoint": lm_teacher_dir})
    run = build(config)
    earlier = loading.run(lm_teacher_dir)
    assert config.student.num_layers == earlier.model_config.num_layers != student_config(
        ).student.num_layers
    for ours, theirs in zip(jax.tree.leaves(run.init().params),
                            jax.tree.leaves(earlier.params["params"])):
        np.testing.assert_array_equal(ours, theirs)
    assert abs(_first_loss_of(run)) < 1e-5
    config = student_config(**{"student_init.checkpoint": lm_teacher_dir,
                               "student_init.from_teacher": True})
    with pytest.raises(DistillError, match="sets checkpoint and from_teacher.*only one of them"):
        build(config)
