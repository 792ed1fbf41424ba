"""Settings of the GPU pool scheduler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from powerplane.control.scheduler.policy import Policy
from powerplane.control.scheduler.request import DEFAULT_CLASSES, DEFAULT_FRACTIONS, JobRequest, PriorityClass

I64 = NDArray[np.int64]

PowerEstimate = Callable[[JobRequest, I64, int], float]
"""(request, GPU indices, milli per GPU) -> expected power draw of the job [W]."""


@dataclass(frozen=True)
class SchedulerConfig:
    """Settings of a :class:`Scheduler`.

    policy: placement policy (binpack, spread, firstfit); order: ``priority`` or strict ``fifo`` (the baseline:
    no classes in the order, no backfill, no deferral).
    preemption: let higher classes preempt lower ones. classes: priority classes (weights in (0, 1]).
    tenant_weights: fair-share weight per tenant (default 1). allowed_fractions: fractions ``fraction=`` may ask.
    restart_charge_gpu_s: victim cost of a restart besides lost work [GPU-s]. preempt_candidates: nodes examined
    exactly when choosing victims. max_defer_s: how long a deferrable job without a deadline may wait for a
    window [s]. cheap_quantile: windows whose cost is at or below this quantile of the plan are cheap/green.
    idle_threshold / starved_threshold: share of an allocation used below which it is idle, above which it is
    starved [-]; idle_grace_s: how long idle before it is reclaimed [s]; reclaim_floor_milli: smallest share an
    idle fractional allocation is shrunk to; starve_after_s: queue wait after which a below-share tenant may
    reclaim from over-share tenants [s]; max_rebalance_preemptions: bound per rebalance; rebalance_interval_s:
    the period callers should run :meth:`Scheduler.rebalance` at (15-30 min).
    """

    policy: Policy = "binpack"
    order: Literal["priority", "fifo"] = "priority"
    preemption: bool = True
    classes: tuple[PriorityClass, ...] = DEFAULT_CLASSES
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    allowed_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    restart_charge_gpu_s: float = 60.0
    preempt_candidates: int = 8
    max_defer_s: float = 86_400.0
    cheap_quantile: float = 0.5
    idle_threshold: float = 0.05
    idle_grace_s: float = 900.0
    starved_threshold: float = 0.95
    reclaim_floor_milli: int = 100
    starve_after_s: float = 1800.0
    max_rebalance_preemptions: int = 16
    rebalance_interval_s: float = 1200.0

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"priority classes need distinct names, got {names}")
        if not 900.0 <= self.rebalance_interval_s <= 1800.0:
            raise ValueError(f"rebalance_interval_s must be 15-30 min, got {self.rebalance_interval_s} s")
        if any(w <= 0 for w in self.tenant_weights.values()):
            raise ValueError("tenant weights must be positive")

    @classmethod
    def fifo_first_fit(cls, **overrides: object) -> SchedulerConfig:
        """The baseline: strict FIFO order, first-fit placement, no preemption."""
        kw: dict[str, object] = {"order": "fifo", "policy": "firstfit", "preemption": False, **overrides}
        return cls(**kw)  # type: ignore[arg-type]
