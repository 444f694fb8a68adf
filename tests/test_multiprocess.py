"""Real multi-process runs: 2 processes × 4 CPU devices joined by jax.distributed over localhost.

Each process is a `jaxdistill train` command (gloo CPU collectives), as a launch script starts
it on each host of a TPU slice or SLURM job; the in-process 1 × 8-device run is the reference.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from jaxdistill import checkpoint, distributed, train
from jaxdistill.errors import DistillError

pytestmark = pytest.mark.slow

SETTINGS = {"total_steps": 60, "log_every": 10, "eval_every": 1000, "student.dropout": 0.1,
            "checkpoint.every_steps": 30, "checkpoint.async_save": False}


def _losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "split" not in r}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, data_dir, teacher_dir, settings, processes=2, devices_per_process=4,
           extra_args=()):
    """Starts one `jaxdistill train` per process; returns the Popen handles."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    overrides = [f"--config.{key}={value}" for key, value in settings.items()]
    command = [sys.executable, "-m", "jaxdistill.cli", "train",
               "--config", "hinton_kd_digits:smoke",
               "--workdir", str(workdir), "--no_progress", f"--config.data.data_dir={data_dir}",
               f"--config.teacher.checkpoint={teacher_dir}", *overrides, *extra_args]
    if processes == 1:
        return [subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)]
    command += ["--coordinator_address", f"localhost:{_free_port()}",
                "--num_processes", str(processes)]
    return [subprocess.Popen(command + ["--process_id", str(i)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i in range(processes)]


def _wait_for_logged_steps(workdir, processes, lines=3, timeout=240):
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.2)


def _finish(processes, timeout=300) -> list[str]:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _reference(smoke_config, teacher_dir, workdir, settings):
    config = smoke_config("hinton_kd_digits")
    config.teacher.checkpoint = teacher_dir
    config.update_from_flattened_dict(settings)
    train.train_and_evaluate(config, str(workdir), progress=False)
    return config


def test_two_processes_train_the_curve_of_one(smoke_config, data_dir, teacher_dir, tmp_path):
    outputs = _finish(_start(tmp_path / "two", data_dir, teacher_dir, SETTINGS))
    assert "step 60 of 60" in outputs[0] and "step 60" not in outputs[1]  # process 0 reports
    config = _reference(smoke_config, teacher_dir, tmp_path / "one", SETTINGS)
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert two.keys() == one.keys()
    assert abs(two[60] - one[60]) / abs(one[60]) < 1e-3
    # The 2-process checkpoint resumes in this single process (8 devices) and trains on.
    config.total_steps = 90
    resumed = train.train_and_evaluate(config, str(tmp_path / "two"), progress=False)
    assert resumed["step"] == 90 and _losses(tmp_path / "two")[90] > 0


def test_sigterm_saves_an_agreed_step_and_the_run_resumes_exactly(
        smoke_config, data_dir, teacher_dir, tmp_path):
    settings = {**SETTINGS, "total_steps": 3000, "checkpoint.every_steps": 1000}
    processes = _start(tmp_path / "preempted", data_dir, teacher_dir, settings)
    _wait_for_logged_steps(tmp_path / "preempted", processes)
    processes[1].send_signal(signal.SIGTERM)  # one host's maintenance notice stops both
    outputs = _finish(processes)
    saved = checkpoint.Checkpointer(str(tmp_path / "preempted"), smoke_config(
        "hinton_kd_digits").checkpoint).latest_step()
    assert saved is not None and 30 <= saved < 3000, outputs[0][-2000:]
    assert f"preempted: saved step {saved}" in outputs[0]
    # Resumed by a single process, the curve is the uninterrupted one.
    config = _reference(smoke_config, teacher_dir, tmp_path / "straight", settings)
    train.train_and_evaluate(config, str(tmp_path / "preempted"), progress=False)
    resumed, straight = _losses(tmp_path / "preempted"), _losses(tmp_path / "straight")
    assert resumed.keys() >= straight.keys()
    for step in straight:
        assert abs(resumed[step] - straight[step]) / abs(straight[step]) < 1e-3, step


def test_a_single_process_saves_on_sigterm_and_exits_with_the_requested_status(
        data_dir, teacher_dir, tmp_path):
    settings = {**SETTINGS, "total_steps": 100000, "checkpoint.every_steps": 100000}
    process, = _start(tmp_path, data_dir, teacher_dir, settings, processes=1,
                      devices_per_process=8, extra_args=["--preempted_exit_code=75"])
    _wait_for_logged_steps(tmp_path, [process])
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 75, output[-2000:]
    saved = checkpoint.Checkpointer(str(tmp_path), ml_collections.ConfigDict(
        {"keep": 1, "async_save": False})).latest_step()
    assert saved is not None and 30 <= saved < 100000
    assert f"preempted: saved step {saved}" in output


def test_incomplete_coordinates_are_refused():
    with pytest.raises(DistillError, match="go together"):
        distributed.initialize("auto", "localhost:1234", None, None)
    with pytest.raises(DistillError, match="unknown --distributed"):
        distributed.initialize("sometimes")
    assert distributed.initialize("auto") is False  # a lone process outside any cluster


@pytest.mark.parametrize("variable, value, joins", [
    ("SLURM_STEP_NUM_TASKS", "4", True), ("SLURM_STEP_NUM_TASKS", "1", False),
    ("SLURM_NTASKS", "4", False),  # the batch script's shell, outside any srun step
    ("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1", True), ("TPU_WORKER_HOSTNAMES", "localhost", False),
])
def test_auto_joins_when_the_scheduler_started_several_processes(monkeypatch, variable, value,
                                                                 joins):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a: calls.append(a))
    monkeypatch.setattr(distributed.jax.config, "update", lambda *a: None)
    for name in ("SLURM_STEP_NUM_TASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert distributed.initialize("auto") is joins
    assert calls == ([(None, None, None)] if joins else [])
    assert distributed.initialize("off") is False and len(calls) == joins
