"""What every benchmark report shares: the machine line, timing, and where the report goes."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time

import jax

from jaxdistill.reproduce.machine import device_description, median_seconds

__all__ = ["Section", "machine", "median_seconds", "publish"]


def machine(devices: str | None = None) -> str:
    """The report's machine line, in the reproduced tables' `device` format; `devices` names the
    devices where jax's own description would say less (e.g. simulated ones)."""
    return f"- machine: {device_description(devices)}"


def publish(text: str, out: str | None) -> None:
    """Prints the report and, with `out`, appends it to that file (results/perf.md)."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text)


class Section:
    """A report section's header: title with the device and date, the command, the machine,
    the wall time and load average since the section was started (call `lines` at the end)."""

    def __init__(self, title: str):
        self.title = title
        self.started, self.load_at_start = time.perf_counter(), os.getloadavg()[0]
        self.device = jax.devices()[0]

    def lines(self, load_note: str = "") -> list[str]:
        now = datetime.datetime.now(datetime.UTC)
        return [
            f"## {self.title}, {self.device.platform.upper()} ({now:%Y-%m-%d %H:%M} UTC)", "",
            f"- command: `{shlex.join(['python', *sys.argv])}`",
            machine(),
            f"- wall time of the whole script: {time.perf_counter() - self.started:.0f} s",
            (f"- load average (1 min) at start / end: {self.load_at_start:.1f} /"
             f" {os.getloadavg()[0]:.1f}{load_note}")]
