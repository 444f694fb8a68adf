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
