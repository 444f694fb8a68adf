"""The engine end to end on smoke-sized runs: sharding invariance, resume, frozen teacher, NaN."""

import json
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxdistill import checkpoint, data, train
from jaxdistill.errors import DistillError, NonFiniteLossError
from jaxdistill.run import build


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "split" not in r}


def _kd_config(smoke_config, teacher_dir, **updates):
    config = smoke_config("hinton_kd_digits", total_steps=60, log_every=10, eval_every=1000)
    config.teacher.checkpoint = teacher_dir
    config.student.dropout = 0.1  # dropout makes the per-device rng layout matter
    config.checkpoint.every_steps = 30
    config.update(updates)
    return config


@pytest.mark.slow
def test_loss_curve_is_the_same_on_1_and_8_devices(smoke_config, teacher_dir, tmp_path):
    config = _kd_config(smoke_config, teacher_dir)
    one = train.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1],
                                   progress=False)
    assert one["step"] == 60
    data_parallel = train.train_and_evaluate(config, str(tmp_path / "eight"), progress=False)
    config.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = train.train_and_evaluate(config, str(tmp_path / "sharded"), progress=False)
    reference = _losses(tmp_path / "one")
    for run in ("eight", "sharded"):
        curve = _losses(tmp_path / run)
        assert curve.keys() == reference.keys()
        assert abs(curve[60] - reference[60]) / abs(reference[60]) < 1e-3
    assert data_parallel["step"] == sharded["step"] == 60


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_loss(smoke_config, teacher_dir, tmp_path):
    config = _kd_config(smoke_config, teacher_dir)
    train.train_and_evaluate(config, str(tmp_path / "straight"), progress=False)
    first = train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_steps=30,
                                     progress=False)
    assert first["step"] == 30
    second = train.train_and_evaluate(config, str(tmp_path / "resumed"), progress=False)
    assert second["step"] == 60
    assert _losses(tmp_path / "resumed")[60] == _losses(tmp_path / "straight")[60]


def test_teacher_is_frozen_and_not_checkpointed(smoke_config, teacher_dir, tmp_path):
    config = _kd_config(smoke_config, teacher_dir, total_steps=5)
    run = build(config)
    before = jax.tree.map(np.array, run.teacher_params)
    on_disk = checkpoint.load_params(teacher_dir, run.teacher_params)
    state = run.init()
    batches = data.train_iterator(config.data, config.batch_size, config.seed)
    for _ in range(5):
        state, _ = run.train_step(state, run.shard_batch(next(batches)))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, run.teacher_params))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, on_disk))
    # The optimizer state mirrors the student only, and a save writes no teacher array.
    first_moment = optax.tree_utils.tree_get(state.opt_state, "mu")
    assert jax.tree.structure(first_moment) == jax.tree.structure(state.params)
    saver = checkpoint.Checkpointer(str(tmp_path), config.checkpoint)
    saver.save(5, state)
    saver.close()
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
    saved = manager.restore(5, args=ocp.args.Composite(state=ocp.args.PyTreeRestore())).state
    assert _nbytes(saved) == _nbytes(state)


def _nbytes(tree):
    def leaf_bytes(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x).nbytes
    return sum(leaf_bytes(x) for x in jax.tree.leaves(tree))


def test_train_step_compiles_once(smoke_config, teacher_dir, caplog):
    config = _kd_config(smoke_config, teacher_dir)
    run = build(config)
    state = run.init()
    batches = data.train_iterator(config.data, config.batch_size, config.seed)
    with jax.log_compiles():
        for _ in range(4):
            state, metrics = run.train_step(state, run.shard_batch(next(batches)))
    compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
    assert len(compiles) == 1
    assert np.isfinite(float(metrics["loss"]))


def test_student_params_follow_the_sharding_rules(smoke_config, teacher_dir):
    config = _kd_config(smoke_config, teacher_dir)
    config.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
    run = build(config)
    state = run.init()
    kernel = state.params["params"]["Dense_0"]["kernel"]  # logical (embed, mlp)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    head_bias = state.params["params"]["head"]["bias"]     # logical (classes,) -> replicated
    assert head_bias.sharding.spec == jax.sharding.PartitionSpec(None)
    assert run.teacher_params["params"]["Dense_0"]["kernel"].sharding.spec == kernel.sharding.spec


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        smoke_config, tmp_path):
    config = smoke_config("hinton_teacher_digits", total_steps=40, log_every=5)
    config.optimizer.update({"lr": 1e12, "warmup_steps": 0, "schedule": "constant"})
    config.checkpoint.every_steps = 1
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step \d+") as error:
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    failed_at = error.value.step
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
    assert manager.latest_step() == failed_at - 1
    restored = checkpoint.load_params(str(tmp_path), build(config).abstract_state().params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))


def test_memory_estimate_splits_activations_over_batch_shards(smoke_config, teacher_dir):
    config = _kd_config(smoke_config, teacher_dir)
    estimates = []
    for devices in (jax.devices()[:1], jax.devices()):
        run = build(config, devices=devices)
        batch = run.shard_batch(next(data.train_iterator(config.data, config.batch_size, 0)))
        estimates.append(run.memory_report(batch))
    one, eight = estimates
    assert one["activations"] > 0 and one["activations"] == 8 * eight["activations"]
    assert one["gradients"] == one["student_params"] > 0
    assert one["teacher_params"] == eight["teacher_params"] > 0  # replicated by the default rules


def test_layout_that_cannot_fit_is_refused_before_training(smoke_config, teacher_dir, tmp_path):
    config = _kd_config(smoke_config, teacher_dir)
    config.mesh.device_memory_gib = 2**-20  # 1 KiB devices
    with pytest.raises(DistillError, match=r"needs about .*B per device .*config\.mesh\.fsdp"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert not os.listdir(tmp_path / "checkpoints")
