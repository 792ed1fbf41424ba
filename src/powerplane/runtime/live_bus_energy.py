"""Energy management over the bus: the fast loop and the planner on the site meter's readings.

In bus mode the twin (or the real plant) runs elsewhere and reports through the plant frames: the grid meter,
the batteries' power and state of charge, the grid frequency and each hall's IT power. The policies of
``runtime/energy.py`` drive an embedded :class:`~powerplane.twin.twin.Twin` (its scheduler, fleet and plant model),
so here the same controllers run on the readings instead:

- ``none``: the batteries are sent to idle once and left there.
- ``threshold``: OpenEMS-style peak shaving within the limits guard (as :class:`ThresholdPolicy`).
- ``mpc``: the fast loop of the mpc policy (limits guard, contract cap, damping, frequency droop) following the
  planner's grid target. The planner (every ``replan_min``) runs on a model of the site that is never advanced
  (weather, cooling, renewables, tariff, battery parameters: what the mpc policy plans on in one process), with
  the batteries' SOC and the IT load (a high quantile of the last hour) read over the bus. Without a model (or
  when a solve fails with no plan yet) the fast loop runs on its rules alone and the state says so. Compute caps
  by class and demand response need the job placement, which the bus does not carry.

One :meth:`BusEnergy.decide` per cycle returns the batteries' setpoints (within each unit's power, SOC window,
backup reserve and ramp), which the runtime sends as ``BessSetpoint`` commands.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.control.fast import Decision, FastLoop, Measurements, allocate
from powerplane.control.planner import Plan, PlanError, solve_plan
from powerplane.physics.battery import BessParams
from powerplane.runtime.energy import DR_CREDIT_PER_KWH, IT_FORECAST_QUANTILE, PolicyStats, _settings, planner_inputs
from powerplane.topology import Topology

if TYPE_CHECKING:
    from powerplane.twin.twin import Twin

F64 = NDArray[np.float64]
BUS_POLICIES = ("none", "threshold", "mpc")
PLANNER_STATUS = "planner: not available over the bus (no site model; the fast loop runs without a plan)"
IT_HISTORY_S = 3600  # IT readings kept for the planner's load forecast (one per cycle)
AUDIT_LIMIT = 100_000


class BusEnergy:
    """The battery controllers of one live policy, fed by meter readings (the runtime's ``policy`` in bus mode)."""

    def __init__(self, site: SiteConfig, topology: Topology, name: str = "mpc", model: Twin | None = None) -> None:
        if name not in BUS_POLICIES:
            raise ValueError(f"unknown live policy {name!r}; valid: {', '.join(BUS_POLICIES)}")
        self.name = name
        self.site = site
        self.events: list[tuple[float, float, float]] = []  # no demand-response events (they need the planner)
        self.params = BessParams.from_config(list(site.bess))
        settings = _settings(site, damping=name == "mpc")
        settings.busbar_w = topology.hall_busbar_limit_w
        settings.unit_hall = np.array([topology.hall_names.index(u.hall) for u in site.bess], dtype=np.int64)
        self.loop = FastLoop(self.params, settings)
        contract = site.electrical.contract_demand_kw * 1e3
        self.peak_w = site.energy.threshold_peak_fraction * contract
        self.recharge_w = site.energy.threshold_recharge_fraction * contract
        self.stats = PolicyStats()
        self.safe_mode = False
        self.model = model if name == "mpc" else None
        self.plan: Plan | None = None
        self.planner_failed = False
        self.planner_status = PLANNER_STATUS if name == "mpc" else "no planner in this policy"
        if self.model is not None:
            self.planner_status = "planner: waiting for the first readings"
        self._next_plan_s = -np.inf
        self._it_recent: deque[float] = deque(maxlen=IT_HISTORY_S)
        self._hall_recent: F64 | None = None
        self.last_decision: Decision | None = None
        self._last_kinds: frozenset[str] = frozenset()
        self._idle_sent = False
        self._tz = ZoneInfo(site.timezone)
        # The month's billed peak so far: the highest completed demand window (15-min mean of grid import).
        self.month_peak_w = 0.0
        self._win_id = -1
        self._win_sum_w = 0.0
        self._win_n = 0
        self._win_month = -1

    @property
    def n_units(self) -> int:
        return int(self.params.n_units)

    def observe(self, t_s: float, grid_w: float, it_w: float, hall_w: F64 | None) -> None:
        """Add one cycle's readings: the grid meter to the demand windows (the month's peak), the IT load to the
        planner's history."""
        if np.isfinite(it_w):
            self._it_recent.append(float(it_w))
        if hall_w is not None:
            self._hall_recent = hall_w.copy()
        if not np.isfinite(grid_w):
            return
        window_s = self.site.tariff.demand_window_min * 60.0
        w = int(t_s // window_s)
        if w != self._win_id:
            if self._win_n:
                self.month_peak_w = max(self.month_peak_w, self._win_sum_w / self._win_n)
            month = dt.datetime.fromtimestamp(w * window_s, self._tz).month
            if month != self._win_month:
                self.month_peak_w = 0.0
                self._win_month = month
            self._win_id, self._win_sum_w, self._win_n = w, 0.0, 0
        self._win_sum_w += grid_w
        self._win_n += 1

    def decide(self, m: Measurements, dt_s: float) -> F64 | None:
        """Per-unit battery setpoints [W] (discharge positive) for this cycle, or None: nothing to send."""
        if self.n_units == 0:
            return None
        if self.name == "none":
            if self._idle_sent:
                return None
            self._idle_sent = True
            self.loop.last_unit_w = np.zeros(self.n_units)
            return np.zeros(self.n_units)
        if self.name == "threshold":
            lo, hi = self.loop.unit_bounds(m, dt_s)
            load = m.load_w
            if not (m.valid and np.isfinite(load)):
                target = 0.0
            elif load > self.peak_w:
                target = load - self.peak_w
            elif load < self.recharge_w:
                target = -(self.recharge_w - load)
            else:
                target = 0.0
            unit = allocate(target, lo, hi, m.soc, self.params)
            self.loop.last_unit_w = unit
            self.stats.decisions += 1
            return unit
        if self.model is not None and m.valid and m.t_s >= self._next_plan_s:
            self._next_plan_s = m.t_s + self.site.energy.replan_min * 60.0
            self._replan(m.t_s, m.soc)
        if self.plan is not None:
            k = int((m.t_s - self.plan.t_s[0]) // self.plan.dt_s)
            self.loop.plan_grid_w = float(self.plan.grid_w[k]) if 0 <= k < self.plan.t_s.size else None
        d = self.loop.step(m, dt_s)
        self.last_decision = d
        self.safe_mode = d.mode == "safe"
        self.stats.decisions += 1
        self.stats.shed_steps += d.shed_w > 0
        self.stats.safe_steps += d.mode == "safe"
        kinds = frozenset(r.split(":")[0].split(" ")[0] for r in d.reasons) | {d.mode}
        if kinds != self._last_kinds and len(self.stats.audit) < AUDIT_LIMIT:
            # Audit what changed (entering or leaving a constraint or a mode), not every cycle.
            self.stats.audit.append(
                {
                    "t_s": m.t_s,
                    "actor": "fast-loop",
                    "mode": d.mode,
                    "bess_w": d.bess_total_w,
                    "bounds_w": list(d.bounds_w),
                    "shed_w": d.shed_w,
                    "why": "; ".join(d.reasons) or ("following the plan" if self.plan else "damping the grid draw"),
                }
            )
            self._last_kinds = kinds
        return d.bess_unit_w

    def status(self) -> dict[str, float]:
        return {
            "safe_mode": float(self.safe_mode),
            "planner_failed": float(self.planner_failed),
            "contract_w": self.site.electrical.contract_demand_kw * 1e3,
            "dr_active": 0.0,
            "dr_limit_w": float("nan"),
        }

    def _replan(self, t_s: float, soc: F64) -> None:
        """Solve the dispatch plan from now over the horizon on the site model, with the SOC and IT load read."""
        assert self.model is not None
        e = self.site.energy
        step = e.planner_step_min * 60.0
        t = np.floor(t_s / step) * step + step * np.arange(round(e.planner_horizon_h * 3600.0 / step))
        n_halls = self.model.topo.n_halls
        it = (
            float(np.quantile(np.fromiter(self._it_recent, np.float64), IT_FORECAST_QUANTILE))
            if self._it_recent
            else self.model.fleet.design_it_power_w * 0.7
        )
        halls = self._hall_recent if self._hall_recent is not None else np.full(n_halls, it / n_halls)
        self.model.plant.bess_soc[:] = soc
        inputs = planner_inputs(
            self.model,
            t,
            np.full(t.size, it),
            np.repeat(halls[None, :], t.size, axis=0),
            self.month_peak_w,
            [],
            None,
            1.0,
            DR_CREDIT_PER_KWH,
            0.0,
        )
        try:
            self.plan = solve_plan(inputs)
        except (PlanError, ValueError) as exc:
            self.stats.plan_failures += 1
            self.planner_failed = True
            keep = "keeping the last plan" if self.plan is not None else "rule-based control only"
            self.planner_status = f"planner: solve failed ({exc}); {keep}"
            self.stats.audit.append({"t_s": t_s, "actor": "planner", "mode": "plan", "why": self.planner_status})
            return
        self.planner_failed = False
        self.stats.plan_solves += 1
        self.stats.plan_solve_s.append(self.plan.solve_s)
        self.planner_status = (
            f"planner: {self.plan.status}, {self.stats.plan_solves} solves, on the site model with the SOC and "
            f"IT load ({it / 1e6:.2f} MW, p{IT_FORECAST_QUANTILE * 100:.0f} of the last hour) read over the bus"
        )
