"""The machine a benchmark ran on (printed with every benchmark's figures)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, Python, Airflow, OS and load of this machine."""
    cpu, ram = platform.processor() or "unknown", "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), cpu)
        kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in ln)
        ram = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    import airflow

    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)",
        "RAM": ram,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Airflow": airflow.__version__,
        "OS": platform.platform(),
        "load avg": " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)",
    }


def machine_line() -> str:
    """The same on one line."""
    return ", ".join(f"{k} {v}" for k, v in machine().items())
