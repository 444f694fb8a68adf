"""What every benchmark report shares: the machine line and where the report goes."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax


def machine(devices: str) -> str:
    return (f"- machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()},"
            f" {platform.platform()}; jax {jax.__version__}, {devices}")


def publish(text: str, out: str | None) -> None:
    """Prints the report and, with `out`, appends it to that file (results/perf.md)."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text)


def median_seconds(call, repeats: int) -> float:
    """The median wall time of `call()` over `repeats` calls, after one warm-up call."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
