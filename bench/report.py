"""What every benchmark report shares: the machine line and where the report goes."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
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


class Section:
    """A report section's header: title with the device and date, the command, the machine,
    the wall time and load average since the section was started (call `lines` at the end)."""

    def __init__(self, title: str):
        self.title = title
        self.started, self.load_at_start = time.perf_counter(), os.getloadavg()[0]
        self.device = jax.devices()[0]

    def lines(self, load_note: str = "") -> list[str]:
        now = datetime.datetime.now(datetime.timezone.utc)
        return [
            f"## {self.title}, {self.device.platform.upper()} ({now:%Y-%m-%d %H:%M} UTC)", "",
            f"- command: `{shlex.join(['python', *sys.argv])}`",
            machine(f"device {self.device.device_kind}"),
            f"- wall time of the whole script: {time.perf_counter() - self.started:.0f} s",
            f"- load average (1 min) at start / end: {self.load_at_start:.1f} /"
            f" {os.getloadavg()[0]:.1f}{load_note}"]
