"""A fixed-size ring buffer of per-GPU readings at full rate: the last minutes of every GPU, bounded memory.

All storage is allocated up front ([capacity, n_gpus] per metric), so memory never grows with run time.
Defaults keep power in float32 and temperature and utilization in float16 (0.06 C / 0.06 % resolution):
8 bytes per GPU-sample, i.e. 10,240 GPUs x 10 minutes x 10 Hz = 491 MB; at 1 Hz, 49 MB.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike, NDArray

DEFAULT_METRICS: dict[str, DTypeLike] = {"power_w": np.float32, "temp_c": np.float16, "util_pct": np.float16}


class GpuRing:
    def __init__(self, n_gpus: int, capacity: int, metrics: dict[str, DTypeLike] | None = None) -> None:
        if capacity < 1:
            raise ValueError("the ring needs room for at least one sample")
        self.n_gpus = n_gpus
        self.capacity = capacity
        self.metrics = dict(metrics or DEFAULT_METRICS)
        self.t_s = np.full(capacity, np.nan)
        self._data = {m: np.full((capacity, n_gpus), np.nan, dtype=dt) for m, dt in self.metrics.items()}
        self._next = 0
        self.size = 0

    @classmethod
    def for_window(
        cls, n_gpus: int, window_s: float, rate_hz: float, metrics: dict[str, DTypeLike] | None = None
    ) -> GpuRing:
        return cls(n_gpus, max(1, int(np.ceil(window_s * rate_hz))), metrics)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._data.values()) + self.t_s.nbytes)

    def push(self, t_s: float, values: dict[str, NDArray[np.float64]]) -> None:
        """Store one sample; metrics not given are stored as NaN (missing)."""
        i = self._next
        self.t_s[i] = t_s
        for m, arr in self._data.items():
            v = values.get(m)
            if v is None:
                arr[i] = np.nan
            else:
                arr[i] = v
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def _order(self) -> NDArray[np.int64]:
        start = (self._next - self.size) % self.capacity
        return (start + np.arange(self.size)) % self.capacity

    def window(
        self, start_s: float = -np.inf, end_s: float = np.inf, gpus: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float64], dict[str, NDArray[np.floating]]]:
        """Samples with ``start_s <= t < end_s`` in time order: (t_s [k], {metric: [k, n or len(gpus)]})."""
        order = self._order()
        t = self.t_s[order]
        sel = order[(t >= start_s) & (t < end_s)]
        cols = slice(None) if gpus is None else gpus
        return self.t_s[sel], {m: a[sel][:, cols] for m, a in self._data.items()}

    def latest(self, metric: str) -> NDArray[np.floating]:
        if self.size == 0:
            raise LookupError("the ring is empty")
        return self._data[metric][(self._next - 1) % self.capacity]
