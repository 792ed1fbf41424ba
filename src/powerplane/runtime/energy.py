"""Energy management in closed loop with the twin: the policies of `powerplane simulate --policy`.

- ``none``: batteries idle, no caps.
- ``threshold``: OpenEMS-style peak shaving (discharge by grid - limit above the limit, recharge below a lower
  threshold), every cycle, within the limits guard.
- ``mpc``: ours: the planner (rolling-horizon LP, 24 h, replanned every 15 min on a forecast) publishes grid targets;
  the fast loop (limits, contract, demand response, damping, frequency) follows them every cycle; GPU caps by class
  when the batteries cannot hold a limit. Demand-response events are commitments in the LP (with their credit
  and the compute that may be shed), known ahead; during one the batteries hold the committed level and a compute
  level (control/dr.py) caps low, then normal GPUs so that the batteries' energy lasts to the end.
- ``oracle``: the perfect-foresight bound: the LP over the whole run on the realized load (runtime/energy_oracle.py).

The batteries are commanded every step from the previous step's readings; GPU caps change between blocks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import DemandResponseEvent, SiteConfig
from powerplane.control.dr import (
    BASELINE_RULE,
    DrComputeLevel,
    LoadHistory,
    baseline_w,
    caps_for_level,
    event_window_s,
    marginal_facility_per_gpu_w,
    parse_dr,
    sustainable_discharge_w,
)
from powerplane.control.fast import Decision, FastLoop, Measurements, allocate
from powerplane.control.levers import CLASS_ORDER, ComputeLever
from powerplane.control.planner import Plan
from powerplane.core.commands import DeferJob, GpuPowerCap
from powerplane.physics import cooling
from powerplane.physics.battery import BessParams
from powerplane.runtime.energy_inputs import BESS_CELL_TEMP_C, _settings, planner_inputs
from powerplane.twin.twin import Twin, TwinBlock

F64 = NDArray[np.float64]
__all__ = ["BESS_CELL_TEMP_C", "POLICIES", "event_window_s", "make_policy", "parse_dr", "planner_inputs"]
POLICIES = ("none", "threshold", "mpc", "oracle")
IT_HISTORY_BLOCKS = 60  # blocks of IT load kept for the simple forecast (an hour at 1 s steps)
IT_FORECAST_QUANTILE = 0.9
# Demand-response revenue per kWh delivered below the baseline during an event (site currency; an estimate in the
# range of US economic demand-response energy payments). Policies carry it as ``dr_credit_per_kwh``.
DR_CREDIT_PER_KWH = 0.5
DR_BASELINE_RULE = BASELINE_RULE
DR_END_MARGIN_S = 600.0  # the batteries' DR share is sized to last this long past the event's end


@dataclass
class PolicyStats:
    decisions: int = 0
    shed_steps: int = 0
    safe_steps: int = 0
    plan_solves: int = 0
    plan_failures: int = 0
    plan_solve_s: list[float] = field(default_factory=list)
    cycle_s: list[float] = field(default_factory=list)
    audit: list[dict[str, object]] = field(default_factory=list)
    plan_t_s: list[float] = field(default_factory=list)
    plan_grid_w: list[float] = field(default_factory=list)
    dr: list[dict[str, float]] = field(default_factory=list)


class Policy:
    """Base: a step controller for the plant plus hooks around each block."""

    name = "none"

    def __init__(self, twin: Twin, events: list[DemandResponseEvent]) -> None:
        self.twin = twin
        self.site: SiteConfig = twin.site
        self.params: BessParams = twin.plant.bess
        self.stats = PolicyStats()
        self.events = [(*event_window_s(e, self.site.timezone), e.reduction) for e in events]
        # The bill of a run shorter than a month carries that share of the monthly demand charge; the planner
        # prices a new peak the same way so that it optimises the bill it is judged on (1.0 for live operation).
        self.demand_rate_scale = 1.0
        # End of the billing period the demand charge is for (simulate: the run's end; None: the calendar month's).
        self.billing_end_s: float | None = None
        self.dr_credit_per_kwh = DR_CREDIT_PER_KWH
        window = round(self.site.tariff.demand_window_min * 60.0 / twin.dt_s)
        self._grid_ring = np.full(max(window, 1), np.nan)  # the last demand window of grid import [W]
        self._grid_next = 0
        self.safe_mode = False
        self.planner_failed = False
        # The month's billed peak so far: the highest completed demand window (15-min average, aligned to the
        # epoch like the bill); a block shorter than a window only adds to the window it falls in.
        self.month_peak_w = 0.0
        self._win_id = -1
        self._win_sum_w = 0.0
        self._win_n = 0
        self._win_month = -1

    def controller(self) -> object | None:
        return None

    def before_block(self, t_s: float) -> None:
        return None

    def after_block(self, block: TwinBlock) -> None:
        """Bookkeeping every policy does: the rolling demand window for :meth:`status`."""
        grid = np.asarray(block.plant.grid_power_w, dtype=np.float64)
        self._add_to_windows(np.asarray(block.t_s, dtype=np.float64), grid)
        g = grid[-self._grid_ring.size :]
        idx = (self._grid_next + np.arange(g.size)) % self._grid_ring.size
        self._grid_ring[idx] = g
        self._grid_next = int((self._grid_next + g.size) % self._grid_ring.size)

    def _add_to_windows(self, t_s: F64, grid_w: F64) -> None:
        window_s = self.site.tariff.demand_window_min * 60.0
        ids = np.floor(t_s / window_s).astype(np.int64)
        for w in np.unique(ids).tolist():
            if w != self._win_id:
                if self._win_n:
                    self.month_peak_w = max(self.month_peak_w, self._win_sum_w / self._win_n)
                month = dt.datetime.fromtimestamp(w * window_s, ZoneInfo(self.site.timezone)).month
                if month != self._win_month:
                    self.month_peak_w = 0.0  # a new billing month
                    self._win_month = month
                self._win_id, self._win_sum_w, self._win_n = w, 0.0, 0
            inside = ids == w
            self._win_sum_w += float(grid_w[inside].sum())
            self._win_n += int(inside.sum())

    def status(self) -> dict[str, float]:
        """What the policy reports each cycle, for the alert engine's context (agreed keys ``safe_mode``,
        ``planner_failed`` 0/1, ``demand_15min_w`` (rolling mean of grid import over the last demand window),
        ``contract_w``) plus ``dr_active`` (0/1) and ``dr_limit_w`` (NaN outside events)."""
        ring = self._grid_ring
        ok = np.isfinite(ring)
        return {
            "safe_mode": float(self.safe_mode),
            "planner_failed": float(self.planner_failed),
            "demand_15min_w": float(ring[ok].mean()) if ok.any() else float("nan"),
            "contract_w": self.site.electrical.contract_demand_kw * 1e3,
            "dr_active": 0.0,
            "dr_limit_w": float("nan"),
        }


class NonePolicy(Policy):
    name = "none"


class ThresholdPolicy(Policy):
    """OpenEMS peak shaving (FACTS.md): every cycle, discharge by (grid - peak limit) when above it, recharge
    below a lower threshold; limited by the batteries' power, ramp and SOC window."""

    name = "threshold"

    def __init__(self, twin: Twin, events: list[DemandResponseEvent]) -> None:
        super().__init__(twin, events)
        e = self.site.energy
        contract = self.site.electrical.contract_demand_kw * 1e3
        self.peak_w = e.threshold_peak_fraction * contract
        self.recharge_w = e.threshold_recharge_fraction * contract
        self.loop = FastLoop(self.params, _settings(self.site, damping=False))

    def controller(self) -> object:
        def step(t: float, grid: float, bess: F64, soc: F64, freq: float, island: bool, hall: F64 | None) -> F64:
            m = Measurements(t, grid, bess, soc, freq, island, hall)
            lo, hi = self.loop.unit_bounds(m, self.twin.dt_s)
            load = m.load_w
            if load > self.peak_w:
                target = load - self.peak_w
            elif load < self.recharge_w:
                target = -(self.recharge_w - load)
            else:
                target = 0.0
            unit = allocate(target, lo, hi, soc, self.params)
            self.loop.last_unit_w = unit
            self.stats.decisions += 1
            return unit

        return step


class ManagedPolicy(Policy):
    """The fast loop following a plan; the base of ``mpc`` and ``oracle``."""

    name = "mpc"

    def __init__(self, twin: Twin, events: list[DemandResponseEvent]) -> None:
        super().__init__(twin, events)
        self.loop = FastLoop(self.params, _settings(self.site, damping=True))
        fleet = twin.fleet
        self.lever = ComputeLever(fleet.min_cap_w, fleet.max_cap_w, list(self.site.energy.cap_classes))
        self.plan: Plan | None = None
        self.shed_w = 0.0
        self.baseline_w: float | None = None
        self.load_history = LoadHistory()  # load without batteries, per minute, for the DR baseline
        self.baseline_rule = ""
        self.dr_level = DrComputeLevel(list(self.site.energy.cap_classes))
        self._applied_caps = np.full(fleet.min_cap_w.size, np.nan)
        self.active_event: tuple[float, float, float] | None = None
        self._last_kinds: frozenset[str] = frozenset({"normal"})
        self._pue = 1.3
        self._it_per_gpu_w = 1.5  # IT watts per GPU watt (node overhead, network, storage), measured each block
        # What the fast loop adds to the plan's battery power (damping, frequency response), one entry per cycle
        # over the last hour (at most 36,000): the planner prices its wear around the plan.
        self.residual_w = np.full(min(max(round(3600.0 / twin.dt_s), 1), 36_000), np.nan)
        self._residual_i = 0

    def controller(self) -> object:
        import time

        def step(t: float, grid: float, bess: F64, soc: F64, freq: float, island: bool, hall: F64 | None) -> F64:
            t0 = time.perf_counter()
            if self.active_event is not None:
                # During an event the batteries hold the commitment; the compute level makes their energy last.
                self.loop.plan_bess_w = self.loop.peak_target_w = None
            elif self.plan is not None:
                # Follow the plan's battery schedule (the grid takes the load's deviations from the forecast, so
                # forecast error does not turn into battery throughput), holding the plan's 15-min peak (soft).
                k = int((t - self.plan.t_s[0]) // self.plan.dt_s)
                inside = 0 <= k < self.plan.t_s.size
                self.loop.plan_bess_w = float(self.plan.bess_w[k].sum()) if inside else None
                self.loop.peak_target_w = max(self.plan.peak_w, self.month_peak_w) if inside else None
            m = Measurements(t, grid, bess, soc, freq, island, hall)
            d: Decision = self.loop.step(m, self.twin.dt_s)
            if d.mode == "normal" and self.loop.plan_bess_w is not None:
                self.residual_w[self._residual_i % self.residual_w.size] = d.bess_total_w - self.loop.plan_bess_w
                self._residual_i += 1
            self.safe_mode = d.mode == "safe"
            self.shed_w = max(self.shed_w, d.shed_w)
            self.stats.decisions += 1
            self.stats.shed_steps += d.shed_w > 0
            self.stats.safe_steps += d.mode == "safe"
            kinds = frozenset(r.split(":")[0].split(" ")[0] for r in d.reasons) | {d.mode}
            if kinds != self._last_kinds and len(self.stats.audit) < 100_000:
                # Audit what changed (entering or leaving a constraint, a mode, a response), not every cycle.
                self.stats.audit.append(
                    {
                        "t_s": t,
                        "actor": "fast-loop",
                        "mode": d.mode,
                        "bess_w": d.bess_total_w,
                        "bounds_w": list(d.bounds_w),
                        "shed_w": d.shed_w,
                        "why": "; ".join(d.reasons) or "following the plan",
                    }
                )
                self._last_kinds = kinds
            self.stats.cycle_s.append(time.perf_counter() - t0)
            if len(self.stats.cycle_s) > 200_000:
                del self.stats.cycle_s[:100_000]
            return d.bess_unit_w

        return step

    # ------------------------------------------------------------------------ demand response

    def _update_events(self, t_s: float) -> None:
        active = next(((s, e, r) for s, e, r in self.events if s <= t_s < e), None)
        if active is not None and active != self.active_event:
            t, load = self.load_history.arrays()
            base, rule = baseline_w(t, load, active[0], active[1])
            self.baseline_w = base if np.isfinite(base) else self.load_history.last_w()
            self.baseline_rule = rule
            self.dr_level.level = 0.0
            self.stats.dr.append(
                {"start_s": active[0], "end_s": active[1], "reduction": active[2], "baseline_w": self.baseline_w}
            )
            self.stats.audit.append(
                {
                    "t_s": t_s,
                    "actor": "demand-response",
                    "mode": "event",
                    "baseline_w": self.baseline_w,
                    "limit_w": self.baseline_w * (1 - active[2]),
                    "why": f"event starts: baseline by {rule}, reduction {active[2]:.0%} until {active[1]:.0f}",
                }
            )
        elif active is None and self.active_event is None:
            upcoming = next(((s, e, r) for s, e, r in self.events if t_s < s <= t_s + 86400.0), None)
            if upcoming is not None:  # known ahead: prior days give the baseline before the event starts
                t, load = self.load_history.arrays()
                base, rule = baseline_w(t, load, upcoming[0], upcoming[1])
                self.baseline_w = base if rule == "prior days" else None
        self.active_event = active
        # Aim 1 % below the committed level: the loop acts on last cycle's load, so single cycles overshoot.
        self.loop.dr_limit_w = (
            None if active is None or self.baseline_w is None else self.baseline_w * (1 - active[2]) * 0.99
        )

    # ------------------------------------------------------------------------ hooks

    def before_block(self, t_s: float) -> None:
        self._update_events(t_s)
        if self.active_event is not None:
            self._defer_queued(self.active_event[1])
            self._set_admission_budget()
        else:
            # Outside demand-response events admission is not held back by power: holding jobs would change the
            # workload, and its cost (delayed work) is not in the bill the policies are compared on.
            self.twin.workload.sched.set_power_budget(float("inf"))

    def _set_admission_budget(self) -> None:
        """Power-aware admission: the scheduler may start jobs only within the IT power the contract (or a
        demand-response limit) plus the batteries' available discharge allows."""
        from powerplane.control.scheduler.plan import it_power_budget_w

        plant = self.twin.plant
        site = self.site
        pue = self._pue
        reserve = np.array([u.backup_reserve for u in site.bess])
        usable = plant.bess_soc > np.maximum(plant.bess.soc_min, reserve) + 0.02
        battery_w = float(plant.bess.power_max_w[usable].sum())
        contract = site.electrical.contract_demand_kw * 1e3 * site.energy.contract_margin
        dr = self.loop.dr_limit_w if self.loop.dr_limit_w is not None else np.inf
        budget = it_power_budget_w(contract, dr, battery_w, pue)
        sched = self.twin.workload.sched
        draw = sched.pool.draw_w
        overhead = self._it_per_gpu_w

        def estimate(request: object, gpus: NDArray[np.int64], milli: int) -> float:
            return float(draw[gpus].sum()) * milli / 1000.0 * overhead

        sched.set_power_budget(budget, estimate)

    def _defer_queued(self, until_s: float) -> None:
        """During a demand-response event, deferrable jobs waiting in the queue start after it (reversible: the
        hold lifts at the event's end; the delay is kept per job in ``deferred_s``)."""
        wl = self.twin.workload
        jobs = wl.jobs
        held = [j for j in wl.queue if jobs.deferrable[j] and jobs.defer_until_s[j] < until_s]
        if not held:
            return
        res = self.twin.apply([DeferJob(j, until_s) for j in held])
        done = [j for j, r in zip(held, res, strict=True) if r.applied]
        if done:
            self.stats.audit.append(
                {
                    "t_s": self.twin.now_s,
                    "actor": "compute-lever",
                    "mode": "defer",
                    "jobs": done,
                    "why": f"demand response until {until_s:.0f}: deferrable jobs wait",
                }
            )

    def status(self) -> dict[str, float]:
        st = super().status()
        if self.active_event is not None and self.loop.dr_limit_w is not None:
            st["dr_active"] = 1.0
            st["dr_limit_w"] = float(self.loop.dr_limit_w)
        return st

    def after_block(self, block: TwinBlock) -> None:
        super().after_block(block)
        p = block.plant
        load = p.grid_power_w + p.bess_power_w
        self.load_history.add(float(block.t_s[0]), float(load.mean()), float(load.size))
        it = float(p.it_power_w.mean())
        self._pue = float(p.facility_power_w.mean()) / max(it, 1.0)
        self._it_per_gpu_w = it / max(float(block.fleet.gpu_power_w[-1].sum()), 1.0)
        if self.active_event is not None:
            self._dr_caps(block)
        else:
            self._apply_caps(block)

    def _gpu_class(self) -> NDArray[np.int64]:
        wl = self.twin.workload
        prio = wl.jobs.priority[: wl.jobs.n]
        return np.where(wl.gpu_job >= 0, prio[np.maximum(wl.gpu_job, 0)], -1)

    def facility_per_gpu_w(self, t_s: float) -> float:
        """Facility watts per GPU watt at the margin (control/dr.py), at this hour's outdoor temperature."""
        plant = self.twin.plant
        cop = float(cooling.cop(plant.outdoor_temp_c(np.array([t_s])), plant.cop_curve)[0])
        return marginal_facility_per_gpu_w(float(self.twin.fleet.node_share.mean()), plant.other_fraction, cop)

    def _reducible_compute_w(self, t_s: float) -> float:
        """Facility watts that capping the allowed classes' busy GPUs to their minimum would remove now."""
        fleet = self.twin.fleet
        gpu_class = self._gpu_class()
        allowed = np.isin(gpu_class, [CLASS_ORDER[c] for c in self.dr_level.classes])
        gpu_w = float(np.maximum(fleet.power_w - fleet.min_cap_w, 0.0)[allowed].sum())
        return gpu_w * self.facility_per_gpu_w(t_s)

    def _dr_caps(self, block: TwinBlock) -> None:
        """During an event: move the compute level so that the batteries' mean discharge is what their usable
        energy sustains to the event's end (plus any shortfall the fast loop met), then set the level's caps."""
        assert self.active_event is not None
        plant = self.twin.plant
        t_end = float(block.t_s[-1])
        b = self.params
        floor = np.maximum(b.soc_min, np.array([u.backup_reserve for u in self.site.bess]))
        remaining = self.active_event[1] - t_end + DR_END_MARGIN_S
        share = sustainable_discharge_w(plant.bess_soc, floor, b.energy_j, b.eta_discharge, b.power_max_w, remaining)
        excess = float(block.plant.bess_power_w.mean()) - share + self.shed_w
        gpu_class = self._gpu_class()
        fleet = self.twin.fleet
        span = np.array(
            [
                float(((fleet.max_cap_w - fleet.min_cap_w) * (gpu_class == CLASS_ORDER[c])).sum())
                for c in self.dr_level.classes
            ]
        )
        level = self.dr_level.update(excess, span, self.facility_per_gpu_w(t_end), block.t_s.size * self.twin.dt_s)
        caps = caps_for_level(level, fleet.min_cap_w, fleet.max_cap_w, gpu_class, self.dr_level.classes)
        why = f"demand response: level {level:.2f}, batteries' share {share / 1e6:.2f} MW, excess {excess / 1e6:.2f} MW"
        self._set_caps(t_end, caps, why)
        self.shed_w = 0.0

    def _apply_caps(self, block: TwinBlock) -> None:
        """Turn the batteries' shortfall into GPU caps, lowest class first (effective from the next block)."""
        twin = self.twin
        gpu_class = self._gpu_class()
        need_gpu_w = self.shed_w / self.facility_per_gpu_w(float(block.t_s[-1]))
        plan = self.lever.update(
            float(block.t_s[-1]),
            float(block.t_s.size * twin.dt_s),
            need_gpu_w,
            twin.fleet.power_w.astype(np.float64),
            gpu_class,
        )
        self._set_caps(
            float(block.t_s[-1]),
            self.lever.caps_w,
            f"shortfall {self.shed_w / 1e6:.2f} MW; by class { ({k: round(v) for k, v in plan.by_class_w.items()}) }",
        )
        self.shed_w = 0.0

    def _set_caps(self, t_s: float, caps_w: F64, why: str) -> None:
        """Apply the GPU caps that changed since the last ones applied (NaN: the default limit), audited."""
        before = self._applied_caps
        changed = ~((np.isnan(before) & np.isnan(caps_w)) | (before == caps_w))
        self.lever.caps_w = caps_w.copy()
        if not changed.any():
            return
        gpus = np.flatnonzero(changed)
        res = self.twin.apply([GpuPowerCap(gpus, caps_w[gpus])])
        self._applied_caps = caps_w.copy()
        if len(self.stats.audit) < 100_000:
            self.stats.audit.append(
                {
                    "t_s": t_s,
                    "actor": "compute-lever",
                    "mode": "caps",
                    "gpus": int(gpus.size),
                    "cap_before_w": _finite_mean(before[gpus]),
                    "cap_after_w": _finite_mean(caps_w[gpus]),
                    "why": f"{res[0].detail}; {why}",
                }
            )


def _finite_mean(x: F64) -> float | None:
    f = x[np.isfinite(x)]
    return float(f.mean()) if f.size else None


def make_policy(name: str, twin: Twin, events: list[DemandResponseEvent]) -> Policy:
    from powerplane.runtime.energy_mpc import MpcPolicy
    from powerplane.runtime.energy_oracle import OraclePolicy

    classes: dict[str, type[Policy]] = {
        "none": NonePolicy,
        "threshold": ThresholdPolicy,
        "mpc": MpcPolicy,
        "oracle": OraclePolicy,
    }
    if name not in classes:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    return classes[name](twin, events)
