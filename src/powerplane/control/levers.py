"""Compute levers: GPU power caps by priority class (lowest first), vectorized over every GPU.

When the batteries cannot hold a limit, or during a demand-response event, GPU power is capped: low-priority GPUs
first, then normal; core only when configured (POLCA: cap low-priority work first, then all work at a second
threshold; Emerald AI: tiers tolerating different throughput losses). Caps stay at least ``hold_s`` and are
released gradually, so jobs do not oscillate between capped and uncapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

CLASS_ORDER = {"low": 2, "normal": 1, "core": 0}  # priority codes as in the twin and the scheduler


@dataclass
class CapPlan:
    caps_w: F64  # per GPU; NaN where no cap is wanted (default limit)
    reduction_w: float  # GPU power reduction asked for (sum over GPUs)
    by_class_w: dict[str, float]
    shortfall_w: float  # what even capping every allowed class cannot remove


class ComputeLever:
    def __init__(
        self,
        min_cap_w: F64,
        max_cap_w: F64,
        allowed_classes: list[str],
        hold_s: float = 60.0,
        release_w_per_s: float = 5.0,
    ) -> None:
        self.min_cap_w = np.asarray(min_cap_w, dtype=np.float64)
        self.max_cap_w = np.asarray(max_cap_w, dtype=np.float64)
        self.allowed = [c for c in ("low", "normal", "core") if c in allowed_classes]
        self.hold_s = hold_s
        self.release_w_per_s = release_w_per_s
        self.caps_w = np.full(self.min_cap_w.size, np.nan)
        self._last_raise_t = -np.inf

    def plan(self, reduction_w: float, gpu_power_w: F64, gpu_class: I64) -> CapPlan:
        """Caps that take ``reduction_w`` of GPU power away, lowest class first, evenly within a class.

        ``gpu_class`` holds 0 core, 1 normal, 2 low, -1 idle (never capped: nothing to gain).
        """
        caps = np.full(gpu_power_w.size, np.nan)
        need = max(float(reduction_w), 0.0)
        by_class: dict[str, float] = {}
        for name in self.allowed:
            if need <= 0:
                break
            mask = gpu_class == CLASS_ORDER[name]
            reducible = np.where(mask, np.maximum(gpu_power_w - self.min_cap_w, 0.0), 0.0)
            avail = float(reducible.sum())
            if avail <= 0:
                continue
            take = min(need, avail)
            share = take / avail
            caps = np.where(mask, gpu_power_w - share * reducible, caps)
            by_class[name] = take
            need -= take
        return CapPlan(caps, max(float(reduction_w), 0.0) - need, by_class, need)

    def update(self, t_s: float, dt_s: float, reduction_w: float, gpu_power_w: F64, gpu_class: I64) -> CapPlan:
        """Tighten caps at once when more reduction is needed; otherwise hold, then release gradually."""
        if reduction_w > 0:
            plan = self.plan(reduction_w, gpu_power_w, gpu_class)
            tighter = np.where(np.isnan(self.caps_w), plan.caps_w, np.fmin(self.caps_w, plan.caps_w))
            self.caps_w = np.where(np.isnan(plan.caps_w), self.caps_w, tighter)
            self._last_raise_t = t_s
            return plan
        if t_s - self._last_raise_t >= self.hold_s and np.any(np.isfinite(self.caps_w)):
            raised = self.caps_w + self.release_w_per_s * dt_s
            self.caps_w = np.where(raised >= self.max_cap_w, np.nan, raised)
        return CapPlan(self.caps_w.copy(), 0.0, {}, 0.0)
