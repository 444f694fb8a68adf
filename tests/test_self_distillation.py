"""Self-distillation: born-again generation chains and PS-KD's previous-epoch teacher."""

import jax
import numpy as np
import pytest

from jaxdistill import config as config_lib
from jaxdistill import data, train
from jaxdistill.errors import DistillError
from jaxdistill.run import build


def test_born_again_trains_the_whole_chain(smoke_config, tmp_path):
    config = smoke_config("born_again_digits", total_steps=6)
    config.teacher.config = "born_again_digits:smoke,1"  # which names generation 0 in turn
    summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert summary["method"] == "born_again"
    saved = [config_lib.from_json((path / "config.json").read_text()).method
             for path in (tmp_path, tmp_path / "teacher", tmp_path / "teacher" / "teacher")]
    assert saved == ["born_again", "born_again", "supervised"]


def test_born_again_generation_zero_is_supervised():
    assert config_lib.load("born_again_digits:local,0").method == "supervised"
    third = config_lib.load("born_again_digits:local,3")
    assert third.method == "born_again" and third.teacher.config == "born_again_digits:local,2"


def test_born_again_refuses_another_architecture(smoke_config, teacher_dir):
    config = smoke_config("born_again_digits", method="born_again")
    config.teacher.checkpoint = teacher_dir  # the hinton smoke teacher: a 64-64 MLP
    with pytest.raises(DistillError, match="born_again needs the student to share the teacher's"):
        build(config)


def _pskd_run(smoke_config, total_steps):
    config = smoke_config("pskd_digits", total_steps=total_steps, batch_size=512)
    config.optimizer.warmup_steps = 0
    return config, build(config)


def test_pskd_teacher_is_the_previous_epoch(smoke_config):
    """The snapshot stays at the start-of-epoch params until a step completes an epoch."""
    config, run = _pskd_run(smoke_config, total_steps=6)
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)
    assert steps_per_epoch == pytest.approx(1257 / 512)  # epochs end inside steps 3 and 5
    assert run.teacher is None and run.teacher_params is None
    batches = data.train_iterator(config.data, config.batch_size, config.seed)
    state = run.init()
    snapshots, params = [], []
    for _ in range(config.total_steps):
        state, metrics = run.train_step(state, run.shard_batch(next(batches)))
        snapshots.append(jax.tree.map(np.array, state.method_state))
        params.append(jax.tree.map(np.array, state.params))
    initial = jax.tree.map(np.array, run.init().params)
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))  # noqa: E731
    assert same(snapshots[0], initial) and same(snapshots[1], initial)  # steps 1, 2: epoch 0
    assert same(snapshots[2], params[2]) and same(snapshots[3], params[2])  # epoch 1 ends at 3
    assert same(snapshots[4], params[4]) and same(snapshots[5], params[4])  # epoch 2 ends at 5
    # α_t = α_T · epoch / total epochs, at the last step's epoch (2).
    assert float(metrics["pskd/alpha"]) == pytest.approx(0.8 * 2 / (6 / steps_per_epoch))


def test_pskd_snapshot_is_checkpointed_and_resumes_exactly(smoke_config, tmp_path):
    config, _ = _pskd_run(smoke_config, total_steps=6)
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"), progress=False)
    train.train_and_evaluate(config, str(tmp_path / "split"), stop_after_steps=4, progress=False)
    resumed = train.train_and_evaluate(config, str(tmp_path / "split"), progress=False)
    assert resumed["train"]["loss"] == whole["train"]["loss"]
    assert resumed["eval"]["test"] == whole["eval"]["test"]


def test_pskd_checks_alpha(smoke_config):
    config = smoke_config("pskd_digits")
    config.loss.alpha = 1.5
    with pytest.raises(DistillError, match=r"PS-KD's α_T\) must lie in \[0, 1\]"):
        build(config)
