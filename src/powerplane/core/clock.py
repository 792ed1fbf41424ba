"""Clocks. The only module that reads the wall clock; everything else receives a clock.

Time inside PowerPlane is float64 seconds since the Unix epoch.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time in seconds since the epoch."""

    def now_s(self) -> float: ...


class WallClock:
    """The real time."""

    def now_s(self) -> float:
        return time.time()


class SimClock:
    """A clock that only moves when told to: simulated weeks run in seconds."""

    def __init__(self, start_s: float) -> None:
        self._t_s = float(start_s)

    def now_s(self) -> float:
        return self._t_s

    def advance(self, dt_s: float) -> float:
        """Move the clock forward by ``dt_s`` seconds and return the new time."""
        if dt_s < 0:
            raise ValueError("a clock never runs backwards")
        self._t_s += dt_s
        return self._t_s

    def set(self, t_s: float) -> None:
        if t_s < self._t_s:
            raise ValueError("a clock never runs backwards")
        self._t_s = float(t_s)


def perf_counter_s() -> float:
    """Monotonic high-resolution counter for measuring durations (benchmarks, cycle timing)."""
    return time.perf_counter()
