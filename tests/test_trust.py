"""Bad run settings are refused before anything compiles, a checkpoint never holds a non-finite
param, and evaluation rows carry the step they evaluated."""

import json
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxdistill
from jaxdistill import cli, train
from jaxdistill.errors import DistillError, NonFiniteLossError


def _error_line(capsys, *overrides, data_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config=configs/hinton_teacher_digits.py:smoke",
                  f"--workdir={tmp_path}", "--no_progress", f"--config.data.data_dir={data_dir}",
                  *overrides])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("override, expected", [
    ("--config.batch_size=0", "config.batch_size=0 must be a positive integer"),
    ("--config.eval_batch_size=-8", "config.eval_batch_size=-8 must be a positive integer"),
    ("--config.total_steps=0", "config.total_steps=0 must be a positive integer"),
    ("--config.log_every=0", "config.log_every=0 must be a positive integer"),
    ("--config.eval_every=0", "config.eval_every=0 must be a positive integer"),
    ("--config.checkpoint.every_steps=0", "config.checkpoint.every_steps=0 must be a positive"),
    ("--config.checkpoint.keep=0", "config.checkpoint.keep=0 must be a positive integer"),
    ("--config.optimizer.lr=-0.1", "config.optimizer.lr=-0.1 must be a finite number >= 0"),
    ("--config.optimizer.lr=nan", "config.optimizer.lr=nan must be a finite number"),
    ("--config.optimizer.lr=1e39", "config.optimizer.lr=1e+39 must be a finite number"),
    ("--config.eval_splits=('validation','tset')", "config.eval_splits names split 'tset'"),
    ("--config.data.train_split=trian[:50%]", "config.data.train_split names split 'trian"),
])
def test_bad_run_settings_are_refused_before_anything_runs(capsys, tmp_path, data_dir, override,
                                                           expected):
    line = _error_line(capsys, override, data_dir=data_dir, tmp_path=tmp_path)
    assert expected in line, line
    assert not (tmp_path / "checkpoints").exists()  # refused before the run wrote anything


def test_a_student_config_mistake_is_refused_before_its_teacher_trains(capsys, tmp_path,
                                                                       data_dir):
    with pytest.raises(SystemExit):
        cli.main(["train", "--config=configs/hinton_kd_digits.py:smoke", f"--workdir={tmp_path}",
                  "--no_progress", f"--config.data.data_dir={data_dir}",
                  "--config.checkpoint.keep=0"])
    assert "config.checkpoint.keep=0" in capsys.readouterr().err
    assert not (tmp_path / "teacher").exists()


# A loss whose value is finite (0) while its gradient is not (√x at 0): the updated params are
# NaN although the step's loss, measured before the update, is fine.
NAN_GRADIENT_METHOD = '''
import jax
import jax.numpy as jnp

from jaxdistill.methods import register


@register("nan_gradient", teacher="none")
def make_loss(ctx):
    def loss_fn(params, teacher_params, batch, rng, step):
        total = sum(jnp.sum(p) for p in jax.tree.leaves(params))
        return jnp.sqrt(0.0 * total), {}
    return loss_fn
'''


def test_non_finite_params_are_never_checkpointed(smoke_config, tmp_path):
    path = tmp_path / "nan_gradient.py"
    path.write_text(NAN_GRADIENT_METHOD)
    config = smoke_config("hinton_teacher_digits", total_steps=5, method=f"{path}:nan_gradient")
    config.checkpoint.every_steps = 1
    with pytest.raises(NonFiniteLossError, match=r"params became non-finite \(the loss was -?0\)"
                       r" at step 1; training stopped and no checkpoint was written yet"):
        train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    assert ocp.CheckpointManager(str(tmp_path / "run" / "checkpoints")).latest_step() is None


def test_an_invocation_stopped_off_an_eval_step_logs_its_eval_at_that_step(smoke_config,
                                                                           tmp_path):
    config = smoke_config("hinton_teacher_digits")  # 20 steps, evaluated every 10
    for stop in (7, 2, 5):  # steps 7, 9 (off eval steps), then 14
        train.train_and_evaluate(config, str(tmp_path), stop_after_steps=stop, progress=False)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evaluated = sorted({r["step"] for r in records if "split" in r})
    assert evaluated == [7, 9, 10, 14]


def test_version():
    assert jaxdistill.__version__ == "0.1.0"
    out = subprocess.run([sys.executable, "-m", "jaxdistill.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"jaxdistill {jaxdistill.__version__}"


def test_an_unknown_command_says_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'; commands: train, reproduce" in capsys.readouterr().err


def test_validate_refuses_what_the_cli_refuses(smoke_config):
    from jaxdistill import config as config_lib

    config = smoke_config("hinton_teacher_digits", batch_size=0)
    with pytest.raises(DistillError, match="config.batch_size=0"):
        config_lib.validate(config)
    assert np.isfinite(smoke_config("hinton_teacher_digits").optimizer.lr)


@pytest.mark.parametrize("source, expected", [
    ("def get_config(arg):\n    return {", "does not load: SyntaxError"),
    ("def get_config(arg):\n    return undefined_name\n", "NameError: name 'undefined_name'"),
    ("CONFIG = 1\n", "defines no get_config(arg)"),
])
def test_a_broken_config_file_is_one_line(capsys, tmp_path, data_dir, source, expected):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(SystemExit):
        cli.main(["train", f"--config={path}", f"--workdir={tmp_path / 'run'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("name", ["", "/tmp"])
def test_a_data_name_that_is_no_dataset_is_refused(capsys, tmp_path, data_dir, name):
    line = _error_line(capsys, f"--config.data.name={name}", data_dir=data_dir, tmp_path=tmp_path)
    assert f"config.data.name={name!r} must name a TFDS dataset" in line


def test_kd_without_any_teacher_says_it_needs_one(capsys, tmp_path, data_dir):
    with pytest.raises(SystemExit):
        cli.main(["train", "--config=configs/hinton_kd_digits.py:smoke", f"--workdir={tmp_path}",
                  "--no_progress", f"--config.data.data_dir={data_dir}",
                  "--config.teacher.config="])
    assert "method 'kd' needs a teacher" in capsys.readouterr().err


def test_a_teacher_of_another_size_names_no_setting_that_does_not_exist(capsys, tmp_path,
                                                                        data_dir, teacher_dir):
    with pytest.raises(SystemExit):
        cli.main(["train", "--config=configs/gkd_docs.py:smoke", f"--workdir={tmp_path}",
                  "--no_progress", f"--config.data.data_dir={data_dir}",
                  f"--config.teacher.checkpoint={teacher_dir}"])
    error = capsys.readouterr().err
    assert "distil with a teacher trained on this dataset" in error
    assert "config.teacher.vocab_size" not in error and "config.teacher.num_classes" not in error


def test_resuming_says_from_which_step(capsys, smoke_config, tmp_path):
    config = smoke_config("hinton_teacher_digits")
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=10, progress=False)
    capsys.readouterr()
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=1, progress=False)
    assert f"{tmp_path}: resuming from step 10 (checkpoints/10)" in capsys.readouterr().out


def test_configs_lists_the_shipped_configs(capsys):
    cli.main(["configs"])
    out = capsys.readouterr().out
    assert out.startswith("born_again_digits ") and "hinton_kd_digits " in out
    assert "common" not in out.split()
