"""Bad run settings are refused before anything compiles, a checkpoint never holds a non-finite
param, and evaluation rows carry the step they evaluated."""

import errno
import json
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxdistill
from jaxdistill import checkpoint, cli, distributed, train
from jaxdistill import config as config_lib
from jaxdistill.errors import DistillError, NonFiniteLossError, Preempted


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
    ("--config.micro_batches=0", "config.micro_batches=0 must be a positive integer"),
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


@pytest.mark.parametrize("override, expected", [
    ("--config.checkpoint.keep=0", "config.checkpoint.keep=0"),
    ("--config.student.num_classes=7", "the student predicts 7 classes but the dataset has 10"),
    # Needs the teacher's shapes, which its config gives before it trains.
    ("--config.student_init.from_teacher=True", "config.student_init.from_teacher copies the"
                                                " teacher's"),
])
def test_a_student_config_mistake_is_refused_before_its_teacher_trains(capsys, tmp_path,
                                                                       data_dir, override,
                                                                       expected):
    with pytest.raises(SystemExit):
        cli.main(["train", "--config=configs/hinton_kd_digits.py:smoke", f"--workdir={tmp_path}",
                  "--no_progress", f"--config.data.data_dir={data_dir}", override])
    assert expected in capsys.readouterr().err
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


def test_a_preempted_teacher_stops_the_whole_command_and_both_resume(smoke_config, tmp_path,
                                                                    monkeypatch):
    config = smoke_config("hinton_kd_digits")  # the teacher (20 steps) is trained first
    monkeypatch.setattr(distributed.PreemptionWatch, "stop", lambda self, step: step == 7)
    with pytest.raises(Preempted, match="teacher saved step 7"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert checkpoint.Checkpointer(str(tmp_path / "teacher"), config.checkpoint).latest_step() == 7
    assert not (tmp_path / "checkpoints").exists()  # the student never started
    monkeypatch.undo()
    summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert summary["step"] == 20 and not summary["preempted"]
    assert checkpoint.Checkpointer(str(tmp_path / "teacher"),
                                   config.checkpoint).latest_step() == 20


def test_a_preempted_table_writes_nothing_and_exits_with_the_requested_status(
        capsys, tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(distributed.PreemptionWatch, "stop", lambda self, step: step == 3)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reproduce", "hinton2015", "--scale", "smoke", "--seeds", "1",
                  "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "runs"),
                  "--data_dir", data_dir, "--preempted_exit_code", "75"])
    assert exit_info.value.code == 75
    assert "no table was written" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unfinished_teacher_is_refused_unless_asked(smoke_config, tmp_path):
    teacher = smoke_config("hinton_teacher_digits")
    train.train_and_evaluate(teacher, str(tmp_path / "teacher"), stop_after_steps=10,
                             progress=False)
    student = smoke_config("hinton_kd_digits", total_steps=4)
    student.teacher.checkpoint = str(tmp_path / "teacher")
    with pytest.raises(DistillError, match="has trained 10 of its 20 steps; finish it"):
        train.train_and_evaluate(student, str(tmp_path / "student"), progress=False)
    student.teacher.allow_unfinished = True
    assert train.train_and_evaluate(student, str(tmp_path / "student"),
                                    progress=False)["step"] == 4


def test_a_resumed_student_refuses_a_changed_teacher(smoke_config, tmp_path):
    teacher = smoke_config("hinton_teacher_digits", total_steps=10)
    train.train_and_evaluate(teacher, str(tmp_path / "teacher"), progress=False)
    student = smoke_config("hinton_kd_digits")
    student.teacher.checkpoint = str(tmp_path / "teacher")
    train.train_and_evaluate(student, str(tmp_path / "student"), stop_after_steps=5,
                             progress=False)
    pinned = json.loads((tmp_path / "student" / "teacher.json").read_text())
    assert pinned["step"] == 10 and pinned["checkpoint"] == str(tmp_path / "teacher")
    teacher.total_steps = 20  # the teacher trains on: its newest checkpoint is another one
    train.train_and_evaluate(teacher, str(tmp_path / "teacher"), progress=False)
    with pytest.raises(DistillError, match="was taught by step 10 of .* but the teacher is now"
                                           " step 20"):
        train.train_and_evaluate(student, str(tmp_path / "student"), progress=False)


# Drives the CLI with a SIGTERM sent at a chosen moment: "save" while the preemption save of
# step 3 completes (a second signal), "startup" right after the run is built.
SIGTERM_DRIVER = '''
import os, signal, sys
from jaxdistill import checkpoint, cli, distributed, train

def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)

if sys.argv[1] == "save":
    stop = distributed.PreemptionWatch.stop
    distributed.PreemptionWatch.stop = lambda self, step: step == 3 or stop(self, step)
    close = checkpoint.Checkpointer.close
    checkpoint.Checkpointer.close = lambda self: (sigterm(), close(self))
else:
    build = train.build
    train.build = lambda *args, **kwargs: (build(*args, **kwargs), sigterm())[0]
cli.main(sys.argv[2:])
'''


@pytest.mark.parametrize("moment, saved", [("save", 3), ("startup", 1)])
def test_sigterm_at_start_up_or_during_the_save_ends_with_the_preemption_status(
        tmp_path, data_dir, moment, saved):
    driver = tmp_path / "driver.py"
    driver.write_text(SIGTERM_DRIVER)
    result = subprocess.run(
        [sys.executable, str(driver), moment, "train",
         "--config=configs/hinton_teacher_digits.py:smoke", f"--workdir={tmp_path / 'run'}",
         "--no_progress", f"--config.data.data_dir={data_dir}", "--preempted_exit_code=75"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 75, result.stderr[-2000:]
    assert f"preempted: saved step {saved}" in result.stdout
    assert checkpoint.Checkpointer(str(tmp_path / "run"), config_lib.base().checkpoint
                                   ).latest_step() == saved


def test_a_workdir_in_use_is_refused(smoke_config, tmp_path):
    config = smoke_config("hinton_teacher_digits")
    with checkpoint.workdir_lock(str(tmp_path)):
        with pytest.raises(DistillError, match=r"is in use by a run that is still going \(pid"):
            train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists()
    assert train.train_and_evaluate(config, str(tmp_path), stop_after_steps=2,
                                    progress=False)["step"] == 2  # released when it ended


def test_settings_changed_on_resume_are_recorded(capsys, smoke_config, tmp_path):
    train.train_and_evaluate(smoke_config("hinton_teacher_digits"), str(tmp_path),
                             stop_after_steps=5, progress=False)
    config = smoke_config("hinton_teacher_digits", seed=1, batch_size=64)
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=1, progress=False)
    history = [json.loads(line) for line in open(tmp_path / "config_history.jsonl")]
    assert history[0]["changed"] == {"batch_size": [128, 64], "seed": [0, 1]}
    assert "resuming with changed settings: batch_size 128 -> 64, seed 0 -> 1" in (
        capsys.readouterr().out)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1


def test_a_failed_first_run_does_not_block_the_corrected_command(smoke_config, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"method": "supervised", "student": {"model": "mlp", "hidden": [7]}}))  # never trained
    assert train.train_and_evaluate(smoke_config("hinton_teacher_digits"), str(tmp_path),
                                    stop_after_steps=1, progress=False)["step"] == 1


def _two_checkpoints(smoke_config, tmp_path):
    config = smoke_config("hinton_teacher_digits", total_steps=20)
    config.checkpoint.every_steps = 10
    train.train_and_evaluate(config, str(tmp_path), progress=False)
    return config, tmp_path / "checkpoints" / "20"


def _largest_file(directory):
    files = [p for p in directory.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage, reason", [
    ("metadata", "files changed since the save"),
    ("truncate", "files changed since the save"),
    ("flip", "files changed since the save"),
    ("unrecorded_truncate", "does not restore"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(capsys, smoke_config, tmp_path,
                                                                  damage, reason):
    config, newest = _two_checkpoints(smoke_config, tmp_path)
    assert (tmp_path / "checksums" / "10.json").exists()
    assert (tmp_path / "checksums" / "20.json").exists()
    target = _largest_file(newest)
    if damage == "metadata":
        (newest / "state" / "_METADATA").unlink()
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        if damage.startswith("unrecorded"):  # a save that never got its record (kill -9)
            (tmp_path / "checksums" / "20.json").unlink()
        target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2])
    capsys.readouterr()
    config.total_steps = 25
    summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    out = capsys.readouterr().out
    assert "checkpoint 20 skipped: " in out and reason in out, out
    assert "resuming from step 10" in out and summary["step"] == 25


@pytest.mark.parametrize("change", [{"optimizer.grad_clip_norm": 1.0}, {"ema_decay": 0.99}])
def test_resuming_with_another_optimizer_or_ema_is_refused_and_keeps_the_checkpoints(
        smoke_config, tmp_path, change):
    config = smoke_config("hinton_teacher_digits")
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=10, progress=False)
    config.update_from_flattened_dict(change)
    with pytest.raises(DistillError, match="holds another training state than this run builds"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert (tmp_path / "checkpoints" / "10").exists()
    assert not (tmp_path / "skipped_checkpoints").exists()


def test_a_full_disk_while_logging_ends_the_run_with_one_line(smoke_config, tmp_path,
                                                              monkeypatch):
    from tensorboardX.event_file_writer import EventsWriter

    write_event = EventsWriter.write_event

    def full_disk(self, event):  # the disk fills up as step 10 is logged
        if event.step >= 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_event(self, event)

    config = smoke_config("hinton_teacher_digits")
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=5, progress=False)
    monkeypatch.setattr(EventsWriter, "write_event", full_disk)
    with pytest.raises(DistillError, match=r"cannot write the metrics of step 10 under .*"
                                           r"\(No space left on device\); free space"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    monkeypatch.undo()
    assert train.train_and_evaluate(config, str(tmp_path), progress=False)["step"] == 20


# The checkpoint's files exceed a file-size limit, which the kernel enforces like a full disk
# (a write fails with EFBIG rather than ENOSPC); the run's other files stay below it.
FILE_SIZE_LIMIT_DRIVER = """
import resource, sys
from jaxdistill import cli
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
cli.main(sys.argv[1:])
"""


def test_a_save_that_fails_mid_write_is_one_line_and_keeps_the_last_checkpoint(
        smoke_config, tmp_path, data_dir):
    config = smoke_config("hinton_teacher_digits")
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=5, progress=False)
    driver = tmp_path / "driver.py"
    driver.write_text(FILE_SIZE_LIMIT_DRIVER)
    result = subprocess.run(
        [sys.executable, str(driver), "train", "--config=configs/hinton_teacher_digits.py:smoke",
         f"--workdir={tmp_path}", "--no_progress", f"--config.data.data_dir={data_dir}",
         "--config.checkpoint.async_save=False"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    # tensorstore may still print what its writes in flight hit as their event loop closed; no
    # traceback of the run itself is printed, and the run's report is one line.
    assert "jaxdistill/" not in result.stderr and "ERROR:absl" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "jaxdistill" in line] == [
        f"jaxdistill: error: saving the checkpoint of step 10 under {tmp_path} failed (File too"
        " large); free space there (or fix its permissions) and rerun the same command: it"
        " resumes from the last good checkpoint (step 5)"]
    summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
    assert summary["step"] == 20 and not (tmp_path / "skipped_checkpoints").exists()


def test_a_save_the_disk_cannot_hold_is_refused_before_it_starts(smoke_config, tmp_path,
                                                                 monkeypatch):
    config = smoke_config("hinton_teacher_digits")
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=5, progress=False)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DistillError, match=r"the checkpoint of step 10 needs about 0\.\d MiB but"
                                           r" .* has 0\.0 MiB free; free space there and rerun"
                                           r" the same command: it resumes from the last good"
                                           r" checkpoint \(step 5\)"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["5"]
    assert train.train_and_evaluate(config, str(tmp_path), progress=False)["step"] == 20


def test_rows_of_steps_lost_to_a_kill_are_not_logged_twice(smoke_config, tmp_path):
    config = smoke_config("hinton_teacher_digits")
    config.checkpoint.every_steps = 10
    train.train_and_evaluate(config, str(tmp_path), stop_after_steps=15, progress=False)
    # A kill -9 after step 15 was logged but before it was saved, mid-way through a row.
    shutil.rmtree(tmp_path / "checkpoints" / "15")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 16, "lo')
    train.train_and_evaluate(config, str(tmp_path), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    keys = [(row["step"], row.get("split")) for row in rows]
    assert len(keys) == len(set(keys)), keys
    assert all("time" in row for row in rows)
    assert max(row["step"] for row in rows) == 20


def test_print_config_and_dry_run_write_nothing(capsys, tmp_path, data_dir, teacher_dir):
    argv = ["train", "--config=configs/hinton_kd_digits.py:smoke", f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={data_dir}", f"--config.teacher.checkpoint={teacher_dir}",
            "--config.method=taid"]
    cli.main([*argv, "--print_config"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "taid" and printed["loss"]["taid"]["t_start"] == 0.4
    cli.main([*argv[:-1], "--dry_run"])
    assert "memory/device (estimate, before compiling)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*argv[:-1], "--dry_run", "--config.batch_size=7"])
    assert "must be divisible by the 8 batch shards" in capsys.readouterr().err
    cli.main([argv[0], *argv[1:3], "--dry_run"])  # with a teacher to train first
    out = capsys.readouterr().out
    assert "the teacher (hinton_teacher_digits:smoke) is trained first" in out, out
    assert "teacher_params" in out.split("memory/device")[1]  # the student against its shapes
    assert not (tmp_path / "run").exists()


def test_an_unprepared_dataset_says_how_to_prepare_it(capsys, tmp_path):
    line = _error_line(capsys, "--config.data.name=mnist", data_dir=str(tmp_path / "tfds"),
                       tmp_path=tmp_path / "run")
    assert "dataset 'mnist' split 'train' is not prepared in array_record format" in line
    assert "download_and_prepare(file_format='array_record')" in line and "tfds build" not in line


@pytest.mark.parametrize("scale", ["smoke", "local"])
def test_smoke_tables_say_their_numbers_mean_nothing(scale):
    from jaxdistill.reproduce import table

    experiment = table.Experiment("t", "A table.", "accuracy", True, 1, "none", lambda *a: [])
    rows = [table.Row("a", [0.5])]
    result = {"name": "t", "scale": scale, "command": "c", "device": "d", "wall_s": 1.0,
              "seeds": [0], "metric": "accuracy", "higher_is_better": True,
              "rows": table.json_rows(rows)}
    marked = "smoke: checks the path, numbers mean nothing" in table._markdown(
        experiment, result, rows)
    assert marked == (scale == "smoke")


def test_the_eval_a_preemption_skipped_runs_on_resume(smoke_config, tmp_path, monkeypatch):
    config = smoke_config("hinton_teacher_digits")  # evaluated every 10 steps
    monkeypatch.setattr(distributed.PreemptionWatch, "stop", lambda self, step: step == 10)
    with pytest.raises(Preempted):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    monkeypatch.undo()
    train.train_and_evaluate(config, str(tmp_path), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert sorted({row["step"] for row in rows if "split" in row}) == [10, 20]


def test_a_teacher_trained_on_other_inputs_is_refused_before_restoring(smoke_config,
                                                                      teacher_dir):
    from jaxdistill.run import build

    config = smoke_config("cd2023")  # 2-D points; the teacher read 8x8 digits
    config.teacher.checkpoint = teacher_dir
    config.student_init.from_teacher = False
    with pytest.raises(DistillError, match=r"the teacher was trained on sklearn_digits inputs"):
        build(config)


@pytest.mark.parametrize("workdir, expected", [
    ("", "--workdir is empty"),
    ("a_file/run", "cannot write to"),
])
def test_a_workdir_that_cannot_be_written_is_one_line(capsys, tmp_path, data_dir, workdir,
                                                      expected):
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(SystemExit):
        cli.main(["train", "--config=configs/hinton_teacher_digits.py:smoke",
                  f"--workdir={tmp_path / workdir if workdir else ''}", "--no_progress",
                  f"--config.data.data_dir={data_dir}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("damage, expected", [
    ("config", "is not a config jaxdistill wrote"),
    ("checkpoint", "files that changed since the save"),
])
def test_a_damaged_teacher_is_one_line(smoke_config, tmp_path, teacher_dir, damage, expected):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    if damage == "config":
        (teacher / "config.json").write_text('{"student": ')
    else:
        target = _largest_file(teacher / "checkpoints" / "20")  # the step a student reads
        target.write_bytes(target.read_bytes()[:10])
    config = smoke_config("hinton_kd_digits")
    config.teacher.checkpoint = str(teacher)
    with pytest.raises(DistillError, match=expected):
        train.train_and_evaluate(config, str(tmp_path / "student"), progress=False)
