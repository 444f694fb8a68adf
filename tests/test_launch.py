"""The launch scripts: TPU VM dry-runs, the SLURM job with stand-in srun/scontrol, the JobSet."""

import os
import stat
import string
import subprocess

import pytest
import yaml

LAUNCH = os.path.join(os.path.dirname(__file__), os.pardir, "launch")
TRAIN_ARGS = ["--config", "configs/hinton_kd_digits.py:paper", "--workdir", "/gcs/runs/kd",
              "--config.optimizer.lr=3e-4"]


def _tpu_vm(*args, check=True):
    result = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), "--dry-run", *args],
                            capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _commands(result) -> list[str]:
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_tpu_vm_up_creates_installs_and_trains_on_every_worker():
    where = ["--name", "kd", "--zone", "us-west4-a", "--project", "proj"]
    commands = _commands(_tpu_vm("up", *where, "--bucket", "my-bucket", "--", *TRAIN_ARGS))
    create, archive, copy, install, mount, train = commands
    assert create.startswith("gcloud compute tpus tpu-vm create kd --zone=us-west4-a"
                             " --project=proj --accelerator-type=v5litepod-16")
    assert archive.startswith("git ") and " archive " in archive
    assert copy.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in copy
    assert "--worker=all" in install and "pip install -q -e '\\''.[tpu]'\\''" in install
    assert "gcsfuse --implicit-dirs my-bucket /gcs" in mount
    assert "--worker=all" in train
    assert ("jaxdistill train --distributed=on --no_progress --config"
            " configs/hinton_kd_digits.py:paper --workdir /gcs/runs/kd"
            " --config.optimizer.lr=3e-4") in train


def test_tpu_vm_queued_spot_detached_and_delete():
    where = ["--name", "kd", "--zone", "z", "--project", "p"]
    create, = _commands(_tpu_vm("create", "--queued", "--spot", "--type", "v5p-64", *where))
    assert create.startswith("gcloud compute tpus queued-resources create kd")
    assert "--node-id=kd" in create and "--accelerator-type=v5p-64" in create
    assert create.endswith("--spot")
    train, = _commands(_tpu_vm("train", "--detach", *where, "--", *TRAIN_ARGS))
    assert "nohup bash -c" in train and "> ~/jaxdistill.log 2>&1 &" in train
    logs, = _commands(_tpu_vm("logs", *where))
    assert "--worker=0" in logs and "tail -f ~/jaxdistill.log" in logs
    delete, = _commands(_tpu_vm("delete", "--queued", *where))
    assert delete.startswith("gcloud compute tpus queued-resources delete kd")


@pytest.mark.parametrize("args, error", [
    (["train", "--zone", "z", "--project", "p", "--", "--workdir", "w"], "--name"),
    (["train", "--name", "kd", "--zone", "z", "--project", "p"], "needs its arguments"),
    (["launch", "--name", "kd"], "unknown argument launch"),
])
def test_tpu_vm_refuses_incomplete_commands(args, error):
    result = _tpu_vm(*args, check=False)
    assert result.returncode == 2 and error in result.stderr


def _stand_ins(tmp_path, srun_status: int):
    """srun and scontrol that record their arguments; srun exits with `srun_status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, status in (("srun", srun_status), ("scontrol", 0)):
        path = bin_dir / name
        path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> {tmp_path}/calls\n'
                        f"exit {status}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
            "SLURM_SUBMIT_DIR": str(tmp_path)}


@pytest.mark.parametrize("srun_status, requeued, job_status", [(0, False, 0), (75, True, 0),
                                                               (1, False, 1)])
def test_slurm_job_trains_and_requeues_only_after_a_preemption_save(
        tmp_path, srun_status, requeued, job_status):
    result = subprocess.run(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), *TRAIN_ARGS],
                            env=_stand_ins(tmp_path, srun_status), capture_output=True, text=True)
    assert result.returncode == job_status, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == ("srun .venv/bin/jaxdistill train --distributed=on --no_progress"
                        " --preempted_exit_code=75 " + " ".join(TRAIN_ARGS))
    assert (calls[1:] == ["scontrol requeue 42"]) == requeued


def test_slurm_directives_ask_for_the_warning_signal_and_requeue():
    with open(os.path.join(LAUNCH, "slurm_gpu.sbatch")) as f:
        directives = [line.split()[1] for line in f if line.startswith("#SBATCH")]
    assert "--signal=TERM@300" in directives and "--requeue" in directives
    assert "--ntasks-per-node=1" in directives


def test_jobset_runs_one_training_process_per_tpu_host():
    with open(os.path.join(LAUNCH, "gke_jobset.yaml")) as f:
        text = string.Template(f.read()).substitute(
            IMAGE="gcr.io/p/jaxdistill:1", BUCKET="my-bucket", TRAIN_ARGS=" ".join(TRAIN_ARGS))
    jobset = yaml.safe_load(text)
    assert jobset["kind"] == "JobSet"
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4  # hosts of a 4x4 v5e slice
    pod = job["template"]["spec"]
    container, = pod["containers"]
    assert container["resources"]["limits"]["google.com/tpu"] * 4 == 16
    assert container["image"] == "gcr.io/p/jaxdistill:1"
    assert container["args"][0] == ("jaxdistill train --distributed=on --no_progress"
                                    " --preempted_exit_code=75 " + " ".join(TRAIN_ARGS))
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["volumes"][0]["csi"]["volumeAttributes"]["bucketName"] == "my-bucket"
