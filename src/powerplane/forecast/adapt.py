"""Adaptive conformal bands: the P10-P90 band's width follows the coverage the forecasts actually get.

The job-aware model's band is calibrated on its training window; when the load drifts (a new mix of jobs, a
busier week) the same width covers less or more than 80 %. :class:`BandAdapter` is adaptive conformal inference
(Gibbs and Candes, "Adaptive conformal inference under distribution shift", NeurIPS 2021) on the band's scale: per
horizon a factor ``s`` multiplies both half-widths around the median, and each forecast, once its target minute
has been observed, moves ``log s`` by ``gamma x (miss - (1 - coverage))``: up when the actual fell outside the
band, down (by a quarter as much at 80 %) when inside, so the long-run share of misses tends to 20 % whatever the
drift. The median (the point forecast) is never changed.

The backtest runs it over the test window's origins in time order (:func:`adapt_sequence`; a forecast only learns
from targets observed by its origin); the live forecaster feeds it one closed minute at a time.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

GAMMA = 0.01  # step of log(scale) per resolved forecast
COVERAGE = 0.8  # P10-P90
LOG_SCALE_LIMIT = np.log(4.0)  # the scale stays within [1/4, 4] of the calibrated width


def _moved(log_scale: float, miss: bool, gamma: float, miss_target: float) -> float:
    """One forecast's update of its horizon's log band scale (the rule both forms below share)."""
    return min(max(log_scale + gamma * (float(miss) - miss_target), -LOG_SCALE_LIMIT), LOG_SCALE_LIMIT)


class BandAdapter:
    """Per-horizon band scale, updated as forecasts resolve (see the module docstring)."""

    def __init__(self, horizons_min: I64, gamma: float = GAMMA, coverage: float = COVERAGE) -> None:
        self.horizons_min = np.asarray(horizons_min, np.int64)
        self.gamma = gamma
        self.miss_target = 1.0 - coverage
        self.log_scale = np.zeros(self.horizons_min.size)
        self.resolved = 0
        self.missed = 0
        # per horizon, forecasts waiting for their target minute (in target order): (target minute, P10, P90)
        self._pending: list[deque[tuple[int, float, float]]] = [deque() for _ in range(self.horizons_min.size)]
        self._origin = -1  # the origin whose forecasts are being kept, and which horizons it has kept
        self._kept = np.zeros(self.horizons_min.size, dtype=np.bool_)

    @property
    def scale(self) -> F64:
        return np.exp(self.log_scale)

    def _index(self, horizons_min: I64) -> tuple[I64, NDArray[np.bool_]]:
        """The adapter's index of each horizon, and whether it has that horizon at all."""
        h = np.asarray(horizons_min, np.int64)
        idx = np.minimum(np.searchsorted(self.horizons_min, h), self.horizons_min.size - 1)
        return idx, self.horizons_min[idx] == h

    def apply(self, p10: F64, p50: F64, p90: F64, horizons_min: I64 | None = None) -> tuple[F64, F64]:
        """P10 and P90 with the band's half-widths scaled around ``p50`` (arrays ``[..., horizons]``; the last
        axis follows ``horizons_min``, default the adapter's horizons; horizons it has not are left as they are)."""
        s = self.scale
        if horizons_min is not None:
            idx, has = self._index(horizons_min)
            s = np.where(has, s[idx], 1.0)
        return p50 - s * (p50 - p10), p50 + s * (p90 - p50)

    def record(self, origin_min: int, horizons_min: I64, p10: F64, p90: F64) -> None:
        """Keep the (already adapted) band of a forecast made at ``origin_min`` at ``horizons_min``, the first one
        of each origin and horizon only (a forecaster asked many times a minute is scored once per minute);
        horizons the adapter has not are ignored."""
        if origin_min != self._origin:
            self._origin = origin_min
            self._kept[:] = False
        idx, has = self._index(horizons_min)
        ok = has & np.isfinite(p10) & np.isfinite(p90)
        for k, lo, hi in zip(idx[ok].tolist(), p10[ok].tolist(), p90[ok].tolist(), strict=True):
            if not self._kept[k]:
                self._kept[k] = True
                self._pending[k].append((origin_min + int(self.horizons_min[k]), lo, hi))

    def resolve(self, minute: int, actual_of: F64) -> None:
        """Score the forecasts whose target is at or before ``minute``; ``actual_of[m]`` is the observed value of
        minute ``m`` (NaN: not observed, the forecast is dropped unscored)."""
        for k, queue in enumerate(self._pending):
            while queue and queue[0][0] <= minute:
                target, lo, hi = queue.popleft()
                a = actual_of[target] if 0 <= target < actual_of.size else np.nan
                if np.isfinite(a):
                    miss = bool(a < lo or a > hi)
                    self.resolved += 1
                    self.missed += int(miss)
                    self.log_scale[k] = _moved(float(self.log_scale[k]), miss, self.gamma, self.miss_target)


def adapt_sequence(
    origins: I64, horizons_min: I64, p10: F64, p50: F64, p90: F64, actual: F64, gamma: float = GAMMA
) -> tuple[F64, F64]:
    """Adapted P10 and P90 ``[origins, horizons]`` for forecasts made at ``origins`` (sorted minutes) of the
    values ``actual[o, k]`` at ``origins[o] + horizons_min[k]``: each origin uses only the forecasts whose target
    it has seen. Per horizon the resolutions come in origin order, so each is a pointer walk."""
    o = np.asarray(origins, np.int64)
    h = np.asarray(horizons_min, np.int64)
    lo, hi = p10.copy(), p90.copy()
    log_s = np.zeros(h.size)
    target = o[:, None] + h[None, :]
    nxt = np.zeros(h.size, np.int64)  # per horizon: the oldest forecast not yet resolved
    miss_target = 1.0 - COVERAGE
    for i in range(o.size):
        for k in range(h.size):
            j = nxt[k]
            while j < i and target[j, k] <= o[i]:
                a = actual[j, k]
                if np.isfinite(a) and np.isfinite(lo[j, k]):
                    log_s[k] = _moved(float(log_s[k]), bool(a < lo[j, k] or a > hi[j, k]), gamma, miss_target)
                j += 1
            nxt[k] = j
        s = np.exp(log_s)
        lo[i] = p50[i] - s * (p50[i] - p10[i])
        hi[i] = p50[i] + s * (p90[i] - p50[i])
    return lo, hi
