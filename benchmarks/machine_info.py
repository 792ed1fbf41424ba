"""What machine a benchmark ran on, for the rows of BENCHMARKS.md (imported by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
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


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` [s]."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def add_table_row(path: Path, heading: str, note: str, table_header: list[str], row: str) -> Path:
    """Append ``row`` to the table under ``heading`` in BENCHMARKS.md, creating the section (heading, note, header)
    when it is not there; other sections are left as they are."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    if heading not in lines:
        lines += ["", heading, "", note, "", *table_header, row]
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith(("|", "#")):
            i += 1
        if i >= len(lines) or not lines[i].startswith("|"):
            lines[i:i] = [*table_header, row]
        else:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            lines.insert(i, row)
    path.write_text("\n".join(lines) + "\n")
    return path
