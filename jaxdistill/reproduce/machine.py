"""The machine a result was measured on, and how long a call takes on it: what the reproduced
tables and the benchmark reports (bench/) both record."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax


def device_description(devices: str | None = None) -> str:
    """'1× NVIDIA H200 (gpu), 16 host cores x86_64, jax 0.11.2': the devices, the host and jax,
    as the tables' `device` records them. `devices` replaces the first part where the caller
    says more than jax can (e.g. '8 simulated CPU devices')."""
    if devices is None:
        found = jax.devices()
        devices = f"{len(found)}× {found[0].device_kind} ({jax.default_backend()})"
    cpu = platform.processor() or platform.machine()
    return f"{devices}, {os.cpu_count()} host cores {cpu}, jax {jax.__version__}"


def median_seconds(call, repeats: int) -> float:
    """The median wall time of `call()` over `repeats` calls, after one warm-up call."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
