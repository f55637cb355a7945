"""What the benchmark scripts say about the machine they ran on (a helper, not a benchmark)."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (numbers differ between CPU types, even for the same seed)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux,
    bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not say): how busy the machine is."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def rss_mib() -> float | None:
    """Resident memory of this process now, in MiB (``VmRSS``; None where /proc has none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def write_result(out: Path, text: str) -> None:
    """Write a benchmark's Markdown (refusing a NaN measurement) and echo it."""
    if "nan" in text.lower():
        raise SystemExit("a measurement came out as NaN:\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")
