"""What machine a benchmark ran on, for the rows of BENCHMARKS.md (imported by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """``Linux x86_64, <CPU model>, 2 CPUs, Python 3.11.7``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
