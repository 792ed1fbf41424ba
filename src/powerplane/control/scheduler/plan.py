"""What energy management hands the scheduler: cheap or green windows of the plan, and the power budget.

The planner publishes windows ``(start_s, end_s, cost)``; lower cost is better (a price per kWh, or a negated green
share). Windows at or below the ``cheap_quantile`` of the plan's costs are cheap. Outside the plan's horizon
nothing is known, and deferrable jobs are not held back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class EnergyPlan:
    """The windows of the current plan.

    >>> plan = EnergyPlan(0.5)
    >>> plan.set([(0, 3600, 0.12), (3600, 7200, 0.03), (7200, 10800, 0.05)])
    >>> plan.is_cheap(100.0), plan.is_cheap(4000.0), plan.next_cheap_s(100.0)
    (False, True, 3600.0)
    """

    def __init__(self, cheap_quantile: float = 0.5) -> None:
        if not 0.0 <= cheap_quantile <= 1.0:
            raise ValueError(f"cheap_quantile must be in [0, 1], got {cheap_quantile}")
        self.cheap_quantile = cheap_quantile
        self.windows = np.zeros((0, 3), dtype=np.float64)
        self.cheap_cost = math.inf

    def set(self, windows: Sequence[tuple[float, float, float]]) -> None:
        """Replace the windows: (start_s, end_s, cost) each."""
        w = np.asarray(sorted(windows), dtype=np.float64).reshape(-1, 3)
        if np.any(w[:, 1] <= w[:, 0]):
            raise ValueError("every plan window needs end_s > start_s")
        self.windows = w
        self.cheap_cost = float(np.quantile(w[:, 2], self.cheap_quantile)) if w.size else math.inf

    def is_cheap(self, t_s: float) -> bool:
        """True when ``t_s`` lies in a cheap/green window, or outside the plan."""
        w = self.windows
        if not w.size:
            return True
        inside = (w[:, 0] <= t_s) & (t_s < w[:, 1])
        return not inside.any() or bool(np.all(w[inside, 2] <= self.cheap_cost))

    def next_cheap_s(self, t_s: float) -> float:
        """The first time at or after ``t_s`` that :meth:`is_cheap` holds."""
        if self.is_cheap(t_s):
            return t_s
        w = self.windows
        starts = w[(w[:, 0] > t_s) & (w[:, 2] <= self.cheap_cost), 0]
        ends = w[w[:, 1] > t_s, 1]
        # The next cheap window, or the end of the plan's horizon, whichever comes first.
        return float(min(starts.min() if starts.size else math.inf, ends.max() if ends.size else math.inf))


def it_power_budget_w(
    contract_w: float,
    dr_limit_w: float = math.inf,
    battery_w: float = 0.0,
    pue: float = 1.0,
    facility_overhead_w: float = 0.0,
) -> float:
    """IT power the scheduler may commit [W], for :meth:`Scheduler.set_power_budget`.

    The grid import allowed (the contract, or a demand-response limit when lower) plus what the batteries can
    discharge now [W], divided by the PUE (cooling and losses grow with IT power), less fixed facility load [W].

    >>> it_power_budget_w(18e6, dr_limit_w=12e6, battery_w=2e6, pue=1.25)
    11200000.0
    """
    if not pue >= 1.0:
        raise ValueError(f"pue must be at least 1, got {pue}")
    return max((min(contract_w, dr_limit_w) + max(battery_w, 0.0)) / pue - facility_overhead_w, 0.0)
