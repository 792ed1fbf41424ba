"""Validation of raw readings: every bad value is flagged with a reason and counted, never zeroed or averaged in.

Per entity (from its reading timestamp, ``t_s`` in the frame's level, else the frame time):
- ``out_of_order``: older than the last reading accepted -> INVALID (the whole entity this cycle);
- ``duplicate_timestamp``: the same timestamp again -> the reading is a repeat; OK while fresher than
  ``stale_after_s``, then ``stale`` -> STALE;
- ``missing``: the source says it did not report the entity (``_reported`` mask False) -> MISSING.
Per value: ``nan``, ``inf``, ``negative_power``, ``power_above_limit`` (over ``power_factor`` x the GPU's TDP),
``temp_out_of_range`` (outside -20..130 C), ``util_out_of_range`` (outside 0..100 %), ``negative_energy``.
Counters: a decrease of an energy counter is a ``counter_wrap`` (when going round the counter's maximum implies a
plausible energy) or a ``counter_reset`` (driver reload); the energy of that cycle is still accounted.
Unknown entities never reach a frame: sources count them as ``unknown_entity`` / ``unknown_host``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from powerplane.core.frames import Frame
from powerplane.telemetry.snapshot import LevelData, Quality

F64 = NDArray[np.float64]
B = NDArray[np.bool_]

POWER_METRICS = ("power_w", "it_power_w", "facility_power_w", "meter_power_w", "pdu_power_w")
TEMP_METRICS = ("temp_c", "mem_temp_c", "inlet_temp_c", "outdoor_temp_c")
UTIL_METRICS = ("util_pct", "mem_util_pct")
SIGNED_POWER = ("meter_power_w", "grid_power_w", "power_w@bess")  # may be negative by convention
ENERGY_COUNTERS = ("energy_mj",)
RESERVED = ("t_s", "_reported")


@dataclass(frozen=True)
class Limits:
    temp_range_c: tuple[float, float] = (-20.0, 130.0)
    power_factor_of_tdp: float = 1.5
    stale_after_s: float = 5.0
    counter_max_mj: float = float(2**64)  # NVML's total-energy counter is an unsigned 64-bit count of mJ


@dataclass
class Validated:
    levels: dict[str, LevelData]
    rejected: Counter[str]
    energy_delta_j: F64  # per GPU this cycle, from counters where valid, NaN where not
    entity_t_s: dict[str, F64]


class Validator:
    """Stateful validation across cycles (timestamps and counters need the previous reading)."""

    def __init__(self, gpu_tdp_w: F64, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.gpu_tdp_w = np.asarray(gpu_tdp_w, dtype=np.float64)
        self._last_t: dict[str, F64] = {}
        self._last_new_t: dict[str, F64] = {}
        self._last_energy_mj: F64 | None = None
        self._last_energy_t: F64 | None = None
        self._bounds_cache: dict[tuple[str, tuple[str, ...], int], tuple[F64, F64, list[str]]] = {}

    def _entity_quality(
        self, level: str, n: int, frame: Frame, rejected: Counter[str]
    ) -> tuple[NDArray[np.uint8], F64]:
        """Quality of each entity's reading from its timestamp (and the source's ``_reported`` mask)."""
        data = frame.levels[level]
        q = np.zeros(n, dtype=np.uint8)
        last = self._last_t.get(level)
        last_new = self._last_new_t.get(level)
        if last is None or last_new is None or last.shape != (n,):
            last = np.full(n, -np.inf)
            last_new = np.full(n, -np.inf)
        if "t_s" not in data and np.all(last < frame.t_s):
            # One timestamp for the whole level, newer than every last one: the common case, no per-entity work.
            t = np.full(n, frame.t_s)
            self._last_t[level] = t
            self._last_new_t[level] = t
        else:
            t = np.asarray(data["t_s"], dtype=np.float64) if "t_s" in data else np.full(n, frame.t_s)
            bad_t = ~np.isfinite(t)
            older = (t < last) & ~bad_t
            same = (t == last) & ~bad_t
            newer = (t > last) & ~bad_t
            age = frame.t_s - np.where(newer, t, last_new)
            stale = same & (age > self.limits.stale_after_s)
            q[older | bad_t] = Quality.INVALID
            q[stale] = Quality.STALE
            for reason, mask in (
                ("out_of_order", older),
                ("invalid_timestamp", bad_t),
                ("duplicate_timestamp", same),
                ("stale", stale),
            ):
                self._count(rejected, reason, mask)
            self._last_t[level] = np.where(newer, t, last)
            self._last_new_t[level] = np.where(newer, t, last_new)
        if "_reported" in data:
            missing = ~np.asarray(data["_reported"], dtype=bool)
            q[missing] = Quality.MISSING
            self._count(rejected, "missing", missing)
        return q, t

    def _bounds(self, level: str, names: tuple[str, ...], n: int) -> tuple[F64, F64, list[str]]:
        """Per-metric lower and upper bounds ([M, 1] or [M, n]) and the reason each row's breach is counted as."""
        key = (level, names, n)
        if key in self._bounds_cache:
            return self._bounds_cache[key]
        lim = self.limits
        lo = np.full((len(names), 1), -np.inf)
        hi = np.full((len(names), 1), np.inf)
        reasons = [""] * len(names)
        per_gpu_hi: dict[int, F64] = {}
        for i, name in enumerate(names):
            if name in POWER_METRICS and not (level == "bess" or name in SIGNED_POWER):
                lo[i] = 0.0
                reasons[i] = "power"
                if level == "gpu" and name == "power_w" and self.gpu_tdp_w.size == n:
                    per_gpu_hi[i] = lim.power_factor_of_tdp * self.gpu_tdp_w
            elif name in TEMP_METRICS:
                lo[i], hi[i] = lim.temp_range_c
                reasons[i] = "temp_out_of_range"
            elif name in UTIL_METRICS:
                lo[i], hi[i] = 0.0, 100.0
                reasons[i] = "util_out_of_range"
            elif name in ENERGY_COUNTERS:
                lo[i] = 0.0
                reasons[i] = "negative_energy"
        if per_gpu_hi:
            hi = np.repeat(hi, n, axis=1)
            for i, row in per_gpu_hi.items():
                hi[i] = row
        self._bounds_cache[key] = (lo, hi, reasons)
        return lo, hi, reasons

    def _count_reasons(
        self,
        v: F64,
        lo: F64,
        hi: F64,
        bad: NDArray[np.bool_],
        names: tuple[str, ...],
        reasons: list[str],
        rejected: Counter[str],
    ) -> None:
        """Say why each bad value is bad (only rows that hold one: bad values are rare)."""
        for i in np.flatnonzero(bad.any(axis=1)):
            row, b = v[i], bad[i]
            nan = b & np.isnan(row)
            inf = b & np.isinf(row)
            finite = b & ~nan & ~inf
            low = finite & (row < lo[i])
            high = finite & ~low
            self._count(rejected, "nan", nan)
            self._count(rejected, "inf", inf)
            if reasons[i] == "power":
                self._count(rejected, "negative_power", low)
                self._count(rejected, "power_above_limit", high)
            else:
                self._count(rejected, reasons[i] or f"{names[i]}_out_of_range", low | high)

    def validate(self, frame: Frame) -> Validated:
        rejected: Counter[str] = Counter()
        levels: dict[str, LevelData] = {}
        entity_t: dict[str, F64] = {}
        energy_delta = np.full(self.gpu_tdp_w.size, np.nan)
        for level, metrics in frame.levels.items():
            names = tuple(k for k in metrics if k not in RESERVED)
            if not names:
                continue
            sizes = {np.shape(metrics[k]) for k in names}
            if len(sizes) != 1 or len(next(iter(sizes))) != 1:
                raise ValueError(f"frame level {level!r} needs 1-D arrays of one size, got {sorted(sizes)}")
            (n,) = sizes.pop()
            entity_q, t = self._entity_quality(level, n, frame, rejected)
            entity_t[level] = t
            # All metrics of the level as one [M, n] block: a few passes whatever M is.
            v = np.empty((len(names), n))
            for i, k in enumerate(names):
                v[i] = metrics[k]
            lo, hi, reasons = self._bounds(level, names, n)
            with np.errstate(invalid="ignore"):
                bad = ~((v >= lo) & (v <= hi))  # NaN fails both comparisons
            all_live = not entity_q.any()
            if not all_live:
                bad &= (entity_q == Quality.OK)[None, :]
            if bad.any():
                self._count_reasons(v, lo, hi, bad, names, reasons, rejected)
                q = np.where(bad, np.uint8(Quality.INVALID), entity_q[None, :]).astype(np.uint8)
            elif all_live:
                q = np.zeros((len(names), n), dtype=np.uint8)
            else:
                q = np.repeat(entity_q[None, :], len(names), axis=0)
            ld = LevelData(
                values={k: v[i] for i, k in enumerate(names)},
                quality={k: q[i] for i, k in enumerate(names)},
                block=v,
                qblock=q,
                names=names,
            )
            if level == "gpu" and "energy_mj" in ld.values:
                energy_delta = self._energy_delta(ld.values["energy_mj"], ld.quality["energy_mj"], frame.t_s, rejected)
            levels[level] = ld
        return Validated(levels, rejected, energy_delta, entity_t)

    def _energy_delta(self, e_mj: F64, q: NDArray[np.uint8], t_s: float, rejected: Counter[str]) -> F64:
        """Energy per GPU since the last valid counter reading [J]; NaN where there is none.

        A decrease is a wrap when going round the counter's maximum implies an energy the GPU could have drawn
        since the last reading (at most ``power_factor_of_tdp`` x TDP), otherwise a reset (driver reload), whose
        energy is the new reading since zero.
        """
        lim = self.limits
        prev = self._last_energy_mj
        prev_t = self._last_energy_t
        ok = q == Quality.OK
        if prev is None or prev_t is None or prev.shape != e_mj.shape:
            prev = np.full(e_mj.shape, np.nan)
            prev_t = np.full(e_mj.shape, np.nan)
        delta = e_mj - prev
        have = ok & np.isfinite(prev)
        drop = have & (delta < 0)
        if drop.any():
            wrap_delta = lim.counter_max_mj - prev + e_mj
            plausible = wrap_delta <= lim.power_factor_of_tdp * self.gpu_tdp_w * np.maximum(t_s - prev_t, 1e-3) * 1e3
            wrap = drop & plausible
            reset = drop & ~plausible
            self._count(rejected, "counter_wrap", wrap)
            self._count(rejected, "counter_reset", reset)
            delta = np.where(wrap, wrap_delta, np.where(reset, e_mj, delta))
        delta = np.where(have, delta, np.nan)
        self._last_energy_mj = np.where(ok, e_mj, prev)
        self._last_energy_t = np.where(ok, t_s, prev_t)
        return delta / 1e3  # mJ -> J

    @staticmethod
    def _count(rejected: Counter[str], reason: str, mask: B) -> None:
        c = int(np.count_nonzero(mask))
        if c:
            rejected[reason] += c
