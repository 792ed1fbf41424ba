"""Energy management over the bus: the fast loop on the site meter's readings, without the planner.

In bus mode the twin (or the real plant) runs elsewhere and reports through the plant frames: the grid meter,
the batteries' power and state of charge, the grid frequency and each hall's IT power. The policies of
``runtime/energy.py`` drive an embedded :class:`~powerplane.twin.twin.Twin` (its scheduler, fleet and plant model),
so here the same controllers run on the readings instead:

- ``none``: the batteries are sent to idle once and left there.
- ``threshold``: OpenEMS-style peak shaving within the limits guard (as :class:`ThresholdPolicy`).
- ``mpc``: the fast loop of the mpc policy (limits guard, contract cap, damping, frequency droop) with no plan to
  follow: the planner needs the workload and plant models of an embedded twin and is not available over the bus.

One :meth:`BusEnergy.decide` per cycle returns the batteries' setpoints (within each unit's power, SOC window,
backup reserve and ramp), which the runtime sends as ``BessSetpoint`` commands.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.control.fast import Decision, FastLoop, Measurements, allocate
from powerplane.physics.battery import BessParams
from powerplane.runtime.energy import PolicyStats, _settings
from powerplane.topology import Topology

F64 = NDArray[np.float64]
BUS_POLICIES = ("none", "threshold", "mpc")
PLANNER_STATUS = "planner: not available over the bus (the fast loop runs without a plan)"
AUDIT_LIMIT = 100_000


class BusEnergy:
    """The battery controllers of one live policy, fed by meter readings (the runtime's ``policy`` in bus mode)."""

    plan = None  # no dispatch plan over the bus

    def __init__(self, site: SiteConfig, topology: Topology, name: str = "mpc") -> None:
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
        self.planner_status = PLANNER_STATUS if name == "mpc" else "no planner in this policy"
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

    def observe_grid(self, t_s: float, grid_w: float) -> None:
        """Add one meter reading to the demand windows (for the month's peak)."""
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
                    "why": "; ".join(d.reasons) or "damping the grid draw (no plan over the bus)",
                }
            )
            self._last_kinds = kinds
        return d.bess_unit_w

    def status(self) -> dict[str, float]:
        return {
            "safe_mode": float(self.safe_mode),
            "planner_failed": 0.0,
            "contract_w": self.site.electrical.contract_demand_kw * 1e3,
            "dr_active": 0.0,
            "dr_limit_w": float("nan"),
        }
