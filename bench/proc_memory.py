"""A Linux process's memory from /proc, for the benchmarks that measure host memory (standard
library only: a measured child imports it before the libraries whose cost it measures)."""

from __future__ import annotations


def vm(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM, RssAnon, RssFile, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Resets this process's peak RSS (VmHWM, which ru_maxrss reads too) to its current RSS;
    False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
