"""Training at scale: gradient accumulation equals the large batch it splits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import data
from jaxdistill import step as step_lib
from jaxdistill.errors import DistillError
from jaxdistill.run import build

MICRO_BATCHES = 4


def _uneven_batch(run, config) -> dict:
    """A train batch whose micro-batches count different numbers of tokens: rows 0, 4, 8, ...
    (all in micro-batch 0) keep only their first 3 continuation tokens."""
    batch = next(data.train_iterator(config.data, config.batch_size, config.seed))
    mask = batch["continuation_mask"].copy()
    mask[::MICRO_BATCHES, 3:] = 0
    return run.shard_batch({**batch, "continuation_mask": mask})


@pytest.mark.parametrize("method", ["sft", "logit_kd"])
def test_an_accumulated_step_equals_the_large_batch(student_config, method):
    runs = {m: build(student_config(method=method, batch_size=32, micro_batches=m))
            for m in (1, MICRO_BATCHES)}
    batch = _uneven_batch(runs[1], runs[1].config)
    counts = np.asarray(batch["continuation_mask"]).reshape(8, MICRO_BATCHES, -1).sum((0, 2))
    assert len(set(counts)) > 1  # equal weights per micro-batch would be wrong here

    state = runs[1].init()
    gradients = {m: jax.jit(step_lib.accumulated_gradients(runs[m].loss.loss_fn, m))(
        state.params, runs[m].teacher_params, batch, jax.random.key(0), state.step,
        state.method_state) for m in runs}
    (one_value, one_metrics), one_grads = gradients[1]
    (value, metrics), grads = gradients[MICRO_BATCHES]
    np.testing.assert_allclose(value, one_value, rtol=1e-6)
    assert metrics["loss_weight"] == one_metrics["loss_weight"] == counts.sum()
    for ours, large in zip(jax.tree.leaves(grads), jax.tree.leaves(one_grads)):
        np.testing.assert_allclose(ours, large, rtol=1e-5, atol=1e-8)

    after = {m: runs[m].train_step(runs[m].init(), batch)[0].params for m in runs}
    deviation = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), after[1],
                             after[MICRO_BATCHES])
    assert max(jax.tree.leaves(deviation)) <= 1e-6


def test_accumulation_is_checked_and_shrinks_the_activation_estimate(student_config):
    with pytest.raises(DistillError, match=r"batch_size=16 must be divisible by"
                                           r" config.micro_batches=4 × the 8 batch shards"):
        build(student_config(method="sft", batch_size=16, micro_batches=4))
    reports = {}
    for m in (1, MICRO_BATCHES):
        run = build(student_config(method="sft", batch_size=32, micro_batches=m))
        reports[m] = run.memory_report(_uneven_batch(run, run.config))
    assert reports[1]["activations"] == MICRO_BATCHES * reports[MICRO_BATCHES]["activations"] > 0
    assert "accumulated_gradients" not in reports[1]
    assert reports[MICRO_BATCHES]["accumulated_gradients"] == reports[1]["gradients"]


def _loss_curve(run, steps: int) -> tuple[np.ndarray, object]:
    config = run.config
    batches = data.train_iterator(config.data, config.batch_size, config.seed)
    state, losses = run.init(), []
    for _ in range(steps):
        state, metrics = run.train_step(state, run.shard_batch(next(batches)))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


# bfloat16 keeps 8 significant bits (relative rounding 2^-9): the logits of a 1-layer student and
# a 2-layer teacher carry a few such roundings, so a per-step loss within 2% of float32's is what
# a correct policy gives; a float32-only statistic computed in bfloat16 would not stay within it.
BF16_LOSS_TOLERANCE = 0.02


def test_bfloat16_tracks_float32_and_stores_the_teacher_in_half_the_memory(student_config):
    steps, curves, reports, states, runs = 30, {}, {}, {}, {}
    for precision in ("float32", "bfloat16"):
        runs[precision] = build(student_config(method="logit_kd", precision=precision,
                                               total_steps=steps))
        curves[precision], states[precision] = _loss_curve(runs[precision], steps)
        reports[precision] = runs[precision].memory_report()
    deviation = np.abs(curves["bfloat16"] / curves["float32"] - 1)
    assert deviation.max() <= BF16_LOSS_TOLERANCE, deviation
    assert curves["bfloat16"][-1] < curves["bfloat16"][0]  # it trains
    bf16 = runs["bfloat16"]
    assert bf16.student.dtype == bf16.teacher.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(bf16.teacher_params)} == {jnp.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree.leaves((states["bfloat16"].params,
                                              states["bfloat16"].opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
    assert 2 * reports["bfloat16"]["teacher_params"] == reports["float32"]["teacher_params"]
    for key in ("student_params", "optimizer_state"):
        assert reports["bfloat16"][key] == reports["float32"][key] > 0


def test_bfloat16_needs_a_model_with_a_compute_dtype(smoke_config):
    with pytest.raises(DistillError, match="'mlp' student does not have"):
        build(smoke_config("hinton_teacher_digits", precision="bfloat16"))


def test_remat_policies_give_the_same_gradients_and_keep_less(student_config):
    runs = {policy: build(student_config(method="logit_kd", **{"student.remat": policy}))
            for policy in ("none", "full", "save_dots")}
    batch = _uneven_batch(runs["none"], runs["none"].config)
    state = runs["none"].init()
    results = {policy: jax.jit(jax.value_and_grad(run.loss.loss_fn, has_aux=True))(
        state.params, run.teacher_params, batch, jax.random.key(0), state.step,
        state.method_state) for policy, run in runs.items()}
    (value, _), grads = results["none"]
    for policy in ("full", "save_dots"):
        (other_value, _), other_grads = results[policy]
        np.testing.assert_allclose(other_value, value, rtol=1e-6)
        for ours, reference in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-8)
    kept = {policy: run.memory_report(batch)["activations"] for policy, run in runs.items()}
    assert kept["full"] < kept["save_dots"] < kept["none"], kept
