"""Demand response: the baseline, the batteries' sustainable share and the compute level that delivers the rest.

During an event the fast loop holds grid import at the committed level with the batteries, cycle by cycle. What
the batteries cannot sustain to the end of the event comes from compute: a cap *level* that lowers GPU caps class
by class (low first, then normal; core only when configured), set by an integral controller every block so that
the batteries' mean discharge matches what their usable energy can sustain over the rest of the event. The level
is a deterministic function of the caps (not of the measured, already capped power), so the controller neither
ratchets nor forgets what it has already cut.

Conversions: a watt of GPU power costs ``(1 + node_gpu_share)`` watts of IT power (node overhead scales with GPU
power; its base does not) and ``1 + other_fraction + 1 / COP`` facility watts per IT watt at the margin. The average
PUE (facility / IT) overstates the margin, because the fixed loads (node base, battery auxiliaries) do not shrink.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import DemandResponseEvent
from powerplane.control.levers import CLASS_ORDER

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

PRIOR_DAYS = 5  # the baseline looks back at most this many days
DAY_S = 86400.0
BASELINE_RULE = (
    "same hours on prior days: mean load without batteries (grid + battery power) over the event's hours on each "
    f"of up to {PRIOR_DAYS} prior days with readings; the pre-event hour when no prior day has readings"
)


def baseline_w(t_s: F64, load_w: F64, start_s: float, end_s: float) -> tuple[float, str]:
    """The event's baseline [W] and the rule used (``prior days`` or ``pre-event hour``), from a load history.

    >>> t = np.arange(0.0, 2 * 86400.0, 3600.0)
    >>> load = np.where(t < 86400.0, 10.0, 20.0)
    >>> baseline_w(t, load, 86400.0 + 15 * 3600.0, 86400.0 + 18 * 3600.0)
    (10.0, 'prior days')
    """
    t = np.asarray(t_s, dtype=np.float64)
    x = np.asarray(load_w, dtype=np.float64)
    days = []
    for d in range(1, PRIOR_DAYS + 1):
        inside = (t >= start_s - d * DAY_S) & (t < end_s - d * DAY_S)
        if inside.any():
            days.append(float(x[inside].mean()))
    if days:
        return float(np.mean(days)), "prior days"
    inside = (t >= start_s - 3600.0) & (t < start_s)
    if inside.any():
        return float(x[inside].mean()), "pre-event hour"
    before = np.flatnonzero(t < start_s)
    return (float(x[before[-1]]) if before.size else float("nan")), "last reading"


def sustainable_discharge_w(
    soc: F64, floor: F64, energy_j: F64, eta_discharge: F64, power_max_w: F64, remaining_s: float
) -> float:
    """Battery power [W] that the usable energy (above each unit's floor) sustains evenly for ``remaining_s``."""
    usable_j = np.maximum(np.asarray(soc) - np.asarray(floor), 0.0) * energy_j * eta_discharge
    return float(min(usable_j.sum() / max(remaining_s, 1.0), float(np.sum(power_max_w))))


def marginal_facility_per_gpu_w(node_gpu_share: float, other_fraction: float, cop: float) -> float:
    """Facility watts saved per GPU watt capped (see the module docstring).

    >>> round(marginal_facility_per_gpu_w(0.45, 0.05, 4.0), 4)
    1.885
    """
    return (1.0 + node_gpu_share) * (1.0 + other_fraction + 1.0 / max(cop, 0.5))


def caps_for_level(level: float, min_cap_w: F64, max_cap_w: F64, gpu_class: I64, classes: list[str]) -> F64:
    """GPU caps for a level in [0, len(classes)]: level 0.5 puts the first class halfway from its maximum cap
    to its minimum, 1.5 the first at its minimum and the second halfway... NaN where no cap applies."""
    caps = np.full(gpu_class.size, np.nan)
    for k, name in enumerate(classes):
        depth = float(np.clip(level - k, 0.0, 1.0))
        if depth <= 0.0:
            break
        mask = gpu_class == CLASS_ORDER[name]
        caps = np.where(mask, max_cap_w - depth * (max_cap_w - min_cap_w), caps)
    return caps


@dataclass
class DrComputeLevel:
    """The integral controller of the compute level during an event."""

    classes: list[str]
    gain: float = 0.7  # share of the error corrected per update when no block length is given
    tau_s: float = 50.0  # otherwise 1 - exp(-block / tau): 0.7 for a 60-s block, 0.02 for a 1-s live cycle
    level: float = 0.0

    def update(
        self, excess_w: float, span_gpu_w: F64, facility_per_gpu_w: float, block_s: float | None = None
    ) -> float:
        """``excess_w``: facility watts the batteries gave above their sustainable share in the last block (or
        could not give: shortfall), negative when they gave less. ``span_gpu_w``: per class, the GPU watts that
        one unit of level removes at most (sum of max - min cap over the class's busy GPUs)."""
        gain = self.gain if block_s is None else 1.0 - float(np.exp(-block_s / self.tau_s))
        step = gain * excess_w / max(facility_per_gpu_w, 1.0)
        level = self.level
        top = float(len(self.classes))
        # Walk the level through the classes: a class's span converts watts to level within it.
        while abs(step) > 1e-6:
            k = min(int(np.floor(level if step > 0 else level - 1e-9)), len(self.classes) - 1)
            k = max(k, 0)
            span = float(span_gpu_w[k]) if k < span_gpu_w.size else 0.0
            if span <= 0.0:
                if step > 0 and level < top:
                    level = float(np.floor(level)) + 1.0  # nothing to cut in this class: next one
                    continue
                if step < 0 and level > 0:
                    level = float(np.ceil(level)) - 1.0
                    continue
                break
            room = (k + 1 - level) if step > 0 else (level - k)
            take = min(abs(step) / span, room)
            level += take if step > 0 else -take
            step -= np.sign(step) * take * span
            if (step > 0 and level >= top) or (step < 0 and level <= 0):
                break
        self.level = float(np.clip(level, 0.0, top))
        return self.level


class LoadHistory:
    """Load without batteries, binned per minute, kept for the baseline's prior days (one entry a minute, whatever
    the block length: a live cycle's one-step blocks do not grow it)."""

    def __init__(self, keep_s: float = (PRIOR_DAYS + 1) * DAY_S, bin_s: float = 60.0) -> None:
        self.keep_s = keep_s
        self.bin_s = bin_s
        self._t: list[float] = []
        self._sum: list[float] = []
        self._n: list[float] = []

    def add(self, t_s: float, load_w: float, weight: float = 1.0) -> None:
        """Add a reading (or a block mean with ``weight`` = its steps) at ``t_s``; NaN readings are skipped."""
        if not np.isfinite(load_w):
            return
        b = float(np.floor(t_s / self.bin_s) * self.bin_s)
        if self._t and self._t[-1] == b:
            self._sum[-1] += load_w * weight
            self._n[-1] += weight
        else:
            self._t.append(b)
            self._sum.append(load_w * weight)
            self._n.append(weight)
            if self._t[0] < b - self.keep_s:
                cut = int(np.searchsorted(self._t, b - self.keep_s))
                del self._t[:cut], self._sum[:cut], self._n[:cut]

    def arrays(self) -> tuple[F64, F64]:
        """(bin start [s], mean load [W])."""
        t = np.array(self._t, dtype=np.float64)
        return t, np.array(self._sum, dtype=np.float64) / np.maximum(np.array(self._n, dtype=np.float64), 1e-12)

    def last_w(self) -> float:
        return self._sum[-1] / self._n[-1] if self._t else 0.0


def parse_dr(text: str, timezone: str) -> DemandResponseEvent:
    """``2026-07-15T15:00/3h/-25%`` -> a demand-response event (local start, duration, reduction)."""
    m = re.fullmatch(r"\s*([0-9T:\-]+)\s*/\s*([0-9.]+)\s*h\s*/\s*-?\s*([0-9.]+)\s*%\s*", text)
    if m is None:
        raise ValueError(f"not a demand-response event: {text!r} (expected e.g. 2026-07-15T15:00/3h/-25%)")
    start, hours, pct = m.group(1), float(m.group(2)), float(m.group(3))
    dt.datetime.fromisoformat(start)  # raises a clear ValueError on a bad date
    return DemandResponseEvent(start=start, duration_h=hours, reduction=pct / 100.0)


def event_window_s(ev: DemandResponseEvent, timezone: str) -> tuple[float, float]:
    start = dt.datetime.fromisoformat(ev.start).replace(tzinfo=ZoneInfo(timezone)).timestamp()
    return start, start + ev.duration_h * 3600.0
