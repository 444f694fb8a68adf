"""Multi-process runs on JAX's own runtime, and the preemption stop every process agrees on.

Each host (process) runs the same `jaxdistill train` command. `initialize` joins them through
`jax.distributed.initialize`: explicitly (`--coordinator_address/--num_processes/--process_id`)
or through JAX's detection of Cloud TPU, SLURM, Kubernetes and MPI environments.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from jaxdistill.errors import DistillError

MODES = ("auto", "on", "off")


def _multiprocess_environment() -> str | None:
    """The scheduler that started this process as one of several, when it says so plainly."""
    # Set inside an `srun` step only, so a batch script's own shell never waits for peers.
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "SLURM"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "Cloud TPU (TPU_WORKER_HOSTNAMES)"
    if "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
        return "Cloud TPU multislice"
    return None


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Joins the multi-process run when there is one; returns whether it did.

    `mode`: `on` always initializes (JAX detects the cluster), `off` never, `auto` when explicit
    coordinates are given or the environment is a multi-process SLURM step or TPU slice.
    """
    if mode not in MODES:
        raise DistillError(f"unknown --distributed {mode!r}; choose one of {', '.join(MODES)}")
    explicit = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in explicit) and None in explicit:
        raise DistillError("--coordinator_address, --num_processes and --process_id go together;"
                           " give all three, or none to let JAX detect the cluster")
    if mode == "off" or (mode == "auto" and coordinator_address is None
                         and _multiprocess_environment() is None):
        return False
    # Cross-process collectives between CPU devices (tests, CPU clusters); accelerators ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:
        raise DistillError(f"could not join a multi-process run: {e}. Pass --coordinator_address,"
                           " --num_processes and --process_id, or --distributed=off") from None
    return True


class PreemptionWatch:
    """Says, at one step that every process agrees on, that the run was asked to stop.

    Cloud TPU maintenance, spot VMs and SLURM requeues send SIGTERM. In a multi-process run JAX's
    coordination service receives it and `reached_preemption_sync_point` turns true on every
    process at the same step, whichever of them got the signal. A single process watches the
    signal itself. Use as a context manager around the loop; `stop(step)` is called every step.
    """

    def __init__(self):
        self.multiprocess = jax.process_count() > 1
        self._signalled = threading.Event()
        self._previous_handler = None

    def __enter__(self) -> PreemptionWatch:
        if not self.multiprocess and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(
                signal.SIGTERM, lambda signum, frame: self._signalled.set())
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)

    def stop(self, step: int) -> bool:
        if self.multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled.is_set()
