"""`jaxdistill` from the command line: bad input ends in one clear line, good input trains."""

import json
import os
import subprocess
import sys

import pytest

from jaxdistill import cli, methods
from jaxdistill import config as config_lib


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jaxdistill: error: ")
    return lines[0]


def _train_argv(tmp_path, data_dir, *overrides, config="configs/hinton_kd_digits.py:smoke"):
    return ["train", f"--config={config}", f"--workdir={tmp_path}", "--no_progress",
            f"--config.data.data_dir={data_dir}", "--config.checkpoint.async_save=False",
            *overrides]


def test_unknown_method_lists_the_registered_ones(capsys, tmp_path, data_dir):
    line = _error_line(capsys, _train_argv(tmp_path, data_dir, "--config.method=distil"))
    assert "unknown method 'distil'" in line
    assert f"registered methods: {', '.join(methods.names())}" in line


def test_unknown_config_key_lists_the_valid_ones(capsys, tmp_path, data_dir):
    line = _error_line(capsys, _train_argv(tmp_path, data_dir, "--config.loss.temprature=2"))
    valid = ", ".join(sorted(config_lib.load("hinton_kd_digits:smoke").loss))
    assert "config.loss.temprature" in line and f"valid keys of config.loss: {valid}" in line
    assert "temperature" in valid


def test_unknown_config_variant_and_file(capsys, tmp_path, data_dir):
    line = _error_line(capsys, _train_argv(
        tmp_path, data_dir, config="configs/hinton_kd_digits.py:huge"))
    assert "unknown config variant 'huge'" in line and "smoke, local, paper" in line
    assert "does not exist" in _error_line(capsys, _train_argv(
        tmp_path, data_dir, config="configs/nope.py:smoke"))


def test_class_count_mismatch(capsys, tmp_path, data_dir, teacher_dir):
    line = _error_line(capsys, _train_argv(
        tmp_path, data_dir, f"--config.teacher.checkpoint={teacher_dir}",
        "--config.student.num_classes=7"))
    assert "student predicts 7 classes but the dataset has 10" in line
    assert "config.student.num_classes=10" in line


def test_missing_teacher_checkpoint(capsys, tmp_path, data_dir):
    missing = tmp_path / "no_teacher"
    line = _error_line(capsys, _train_argv(
        tmp_path / "run", data_dir, f"--config.teacher.checkpoint={missing}"))
    assert f"no run found at {missing}" in line


def test_teacher_run_without_a_finished_checkpoint(capsys, tmp_path, data_dir):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(
        {"student": {"model": "mlp", "hidden": [8], "num_classes": 10}}))
    line = _error_line(capsys, _train_argv(
        tmp_path / "run", data_dir, f"--config.teacher.checkpoint={tmp_path / 'teacher'}"))
    assert "has no finished checkpoint" in line


def test_diverging_run_reports_the_step(capsys, tmp_path, data_dir):
    line = _error_line(capsys, _train_argv(
        tmp_path, data_dir, "--config.method=supervised", "--config.optimizer.lr=1e12",
        "--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0",
        "--config.total_steps=40", "--config.checkpoint.every_steps=1"))
    assert "loss became nan at step" in line and "last good checkpoint (step" in line


def test_reproduce_lists_the_tables(capsys):
    cli.main(["reproduce", "--list"])
    assert "hinton2015" in capsys.readouterr().out
    assert "unknown table 'nope'" in _error_line(capsys, ["reproduce", "nope"])


@pytest.mark.slow
def test_console_script_trains_and_resumes(tmp_path, data_dir):
    argv = [os.path.join(os.path.dirname(sys.executable), "jaxdistill"),
            *_train_argv(tmp_path, data_dir, "--config.method=supervised")]
    first = subprocess.run([*argv, "--stop_after_steps=10"], capture_output=True, text=True,
                           check=True)
    assert "step 10 of 20" in first.stdout
    second = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "step 20 of 20" in second.stdout and "test       accuracy" in second.stdout
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if '"split"' not in line]
    assert steps == [5, 10, 15, 20]
    assert any(name.startswith("events.out.tfevents")
               for name in os.listdir(tmp_path / "tensorboard"))


def test_resuming_with_another_model_is_refused(capsys, tmp_path, data_dir):
    (tmp_path / "config.json").write_text(json.dumps(
        {"method": "supervised", "student": {"model": "mlp", "hidden": [8], "num_classes": 10}}))
    (tmp_path / "checkpoints" / "40").mkdir(parents=True)  # the run got as far as a checkpoint
    line = _error_line(capsys, _train_argv(tmp_path, data_dir, "--config.method=supervised"))
    assert "different config.student" in line and "new --workdir" in line


@pytest.mark.slow
@pytest.mark.parametrize("config, method", [
    ("minilm_sentences", "minilm"), ("minilm_sentences", "embedding_kd"),
    ("minilm_sentences", "hidden_mse"), ("minilm_sentences", "hidden_cosine"),
    ("born_again_digits", "born_again"), ("pskd_digits", "pskd")])
def test_every_new_method_trains_from_the_cli(capsys, tmp_path, data_dir, config, method):
    cli.main(_train_argv(tmp_path, data_dir, f"--config.method={method}", "--config.total_steps=2",
                         config=f"configs/{config}.py:smoke"))
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines[-1]["step"] == 2 and any("loss" in line for line in lines)
    assert f"method {method}, step 2 of 2" in capsys.readouterr().out
