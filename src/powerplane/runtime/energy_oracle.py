"""The ``oracle`` policy: the perfect-foresight bound on the bill, and its execution in the twin.

The bound is the dispatch LP over the whole run on the realized load of the same twin without batteries (same
seed, same jobs), at the planner step, with the bill's own terms and nothing else: energy at the tariff (import
priced, export credited), the demand charge on the highest 15-minute average prorated like the bill, battery wear at
the bill's cost per kWh of throughput, the storage adjustment (energy left at the end valued at the run's mean price,
in place of a terminal SOC floor), and demand-response revenue; 15-min demand within contract, as every policy
must keep it (a penalty only if the load makes that impossible, then ``over_contract_kwh`` > 0); no compute
shedding.

Why it is a lower bound on any policy that does not shed compute: any 1-s battery trajectory averaged over the
planner steps is feasible for the LP (the SOC dynamics are linear and the limits convex), and every bill term of the
averaged trajectory is at most that of the 1-s one (prices are constant within a step, the demand charge is on
window averages, ``max(p, 0)`` and ``|p|`` are convex). So ``bound.total`` <= the bill of every such policy.

With damping: a policy that also keeps the grid's ramp limit (mpc) pays the damping's battery wear on top, which
the bound above does not. ``oracle_bound_damped`` is the same LP with wear priced on E|plan + damping| per step,
the damping being what the fast loop's ramp limiter hands the batteries on the realized load (its quantiles per
step): the bill of perfect foresight that damps like mpc does (its plan executed through the limiter, its wear
counted on that). Not a proof-grade bound (a cleverer damper could wear less), but the like-for-like reference.

Execution: every step the batteries are commanded the LP's per-unit power for that slot, through the limits guard
(nameplate, ramp, SOC window, reserve): open loop, because the load is the one the LP saw. The realized bill is the
run's ``bill`` in summary.json; the bound is ``oracle_bound`` beside it.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import DemandResponseEvent
from powerplane.control.dr import baseline_w
from powerplane.control.fast import FastLoop, Measurements, ramp_limited
from powerplane.control.planner import Plan, PlanInputs, solve_plan
from powerplane.physics import tariff
from powerplane.runtime.energy import DR_BASELINE_RULE, Policy, _settings
from powerplane.runtime.energy_inputs import site_plan_fields
from powerplane.twin.twin import Twin

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Realized:
    """The series of the run without batteries, one entry per twin step."""

    t_s: F64
    dt_s: float
    grid_w: F64  # grid import without batteries [W]
    renewable_used_w: F64
    curtailed_w: F64
    hall_it_w: F64  # [T, H]


def demand_share(t_s: F64, dt_s: float, timezone: str) -> float:
    """The bill's proration of the monthly demand charge (covered time over the month's length); for a run over
    several months the smallest share, which keeps the bound a lower bound."""
    zone = ZoneInfo(timezone)
    keys, counts = np.unique(
        [
            (d.year, d.month)
            for d in (dt.datetime.fromtimestamp(float(x), zone) for x in t_s[:: max(1, int(3600 / dt_s))])
        ],
        axis=0,
        return_counts=True,
    )
    shares = []
    for (year, month), _ in zip(keys.tolist(), counts.tolist(), strict=True):
        start = dt.datetime(year, month, 1, tzinfo=zone).timestamp()
        days = calendar.monthrange(year, month)[1]
        covered = np.count_nonzero((t_s >= start) & (t_s < start + days * 86400.0)) * dt_s
        shares.append(min(covered / (days * 86400.0), 1.0))
    return float(min(shares)) if shares else 1.0


def _bin_mean(bucket: NDArray[np.int64], x: F64, n: int) -> F64:
    counts = np.bincount(bucket, minlength=n)
    if x.ndim == 1:
        return np.bincount(bucket, weights=x, minlength=n) / np.maximum(counts, 1)
    return (
        np.stack([np.bincount(bucket, weights=x[:, h], minlength=n) for h in range(x.shape[1])], axis=1)
        / (np.maximum(counts, 1)[:, None])
    )


def oracle_inputs(
    twin: Twin, r: Realized, events: list[tuple[float, float, float]], dr_credit_per_kwh: float
) -> tuple[PlanInputs, list[dict[str, float]]]:
    """The bound's LP (see the module docstring) and the demand-response events with their baselines."""
    site = twin.site
    step = site.energy.planner_step_min * 60.0
    bucket = np.floor((r.t_s - r.t_s[0]) / step).astype(np.int64)
    n = int(bucket.max()) + 1
    t = r.t_s[0] + step * np.arange(n)
    load = _bin_mean(bucket, r.grid_w + r.renewable_used_w, n)
    renew = _bin_mean(bucket, r.renewable_used_w + r.curtailed_w, n)
    price_1s = tariff.price_per_kwh(r.t_s, site.tariff, site.timezone)
    price = _bin_mean(bucket, price_1s, n)
    halls = _bin_mean(bucket, r.hall_it_w, n)
    dr_limit = np.full(n, np.inf)
    dr_base = np.full(n, np.nan)
    dr_stats = []
    for start, end, red in events:
        inside = (t >= start) & (t < end)
        if not inside.any():
            continue
        base, _rule = baseline_w(r.t_s, r.grid_w, start, end)
        dr_limit[inside] = base * (1.0 - red)
        dr_base[inside] = base
        dr_stats.append({"start_s": start, "end_s": end, "reduction": red, "baseline_w": base})
    contract = site.electrical.contract_demand_kw * 1e3
    share = demand_share(r.t_s, r.dt_s, site.timezone)
    inputs = PlanInputs(
        t_s=t,
        dt_s=step,
        load_w=load,
        renewable_w=renew,
        price_per_kwh=price,
        hall_load_w=halls,
        **site_plan_fields(twin, share),
        dr_limit_w=dr_limit if np.isfinite(dr_limit).any() else None,
        dr_baseline_w=dr_base if np.isfinite(dr_base).any() else None,
        dr_credit_per_kwh=dr_credit_per_kwh,
        terminal_value_per_kwh=float(np.mean(price_1s)),
        grid_cap_w=contract,  # the policies must keep 15-min demand within contract: so must the bound's plan
    )
    return inputs, dr_stats


def bound_bill(plan: Plan, p: PlanInputs, e_kwh: F64, currency: str) -> dict[str, object]:
    """The bill of the LP's own schedule (the bound), by the bill's terms."""
    kwh = p.dt_s / 3.6e6
    grid = plan.grid_w
    energy = float(np.sum(np.maximum(grid, 0.0) * p.price_per_kwh) * kwh) - float(
        np.sum(np.maximum(-grid, 0.0)) * kwh * p.export_price_per_kwh
    )
    demand = plan.peak_w / 1e3 * p.demand_rate_per_kw
    if p.contract_w is not None:
        demand += max(plan.peak_w - p.contract_threshold * p.contract_w, 0.0) / 1e3 * p.contract_over_rate_per_kw
    wear = float(np.abs(plan.bess_w).sum() * kwh * p.degradation_cost_per_kwh)
    value = p.terminal_value_per_kwh or 0.0
    storage = -float(((plan.soc[-1] - p.soc0) * e_kwh).sum()) * value
    credit = plan.info.get("dr_credited_kwh", 0.0) * p.dr_credit_per_kwh
    return {
        "currency": currency,
        "energy": energy,
        "demand": demand,
        "degradation": wear,
        "storage_adjustment": storage,
        "dr_credit": credit,
        "total": energy + demand + wear + storage - credit,
        "peak_15min_kw": plan.peak_w / 1e3,
        "lp_objective": plan.objective,
        "over_contract_kwh": float(np.maximum(grid - (p.grid_cap_w or np.inf), 0.0).sum() * kwh),
        "steps": int(p.t_s.size),
        "step_s": p.dt_s,
        "method": "perfect-foresight LP over the whole run on the realized load of the same twin without "
        "batteries, priced by the bill's terms (a lower bound on the bill of any policy that does not shed compute)",
    }


DAMPING_QUANTILES = (np.arange(8) + 0.5) / 8


def damped_bound(twin: Twin, r: Realized, inputs: PlanInputs, e_kwh: F64) -> dict[str, object]:
    """The bound's LP with the damping's wear (see the module docstring), billed by the bill's terms."""
    settings = _settings(twin.site, damping=True)
    damping = r.grid_w - ramp_limited(r.grid_w, twin.plant.bess, settings, r.dt_s)
    bucket = np.floor((r.t_s - r.t_s[0]) / inputs.dt_s).astype(np.int64)  # the run is in time order
    n = inputs.t_s.size
    starts = np.searchsorted(bucket, np.arange(n + 1))
    q = np.stack([np.quantile(damping[starts[k] : starts[k + 1]], DAMPING_QUANTILES) for k in range(n)])
    damped = dataclasses.replace(inputs, damping_w=q)
    plan = solve_plan(damped, time_limit_s=300.0)
    bill = bound_bill(plan, inputs, e_kwh, twin.site.tariff.currency)
    kwh = inputs.dt_s / 3.6e6
    total_w = plan.bess_w.sum(axis=1)
    wear = float(np.abs(total_w[:, None] + q).mean(axis=1).sum() * kwh * inputs.degradation_cost_per_kwh)
    bill["total"] = float(bill["total"]) - float(bill["degradation"]) + wear  # type: ignore[arg-type]
    bill["degradation"] = wear
    bill["damping_throughput_kwh"] = float(np.abs(damping).sum() * r.dt_s / 3.6e6)
    bill["method"] = (
        "the bound's LP with battery wear priced on E|plan + damping| per step, the damping being what the fast "
        "loop's ramp limiter hands the batteries on the realized load: perfect foresight that damps like mpc"
    )
    return bill


class OraclePolicy(Policy):
    """Perfect foresight: the bound's LP over the whole run, executed open loop through the limits guard."""

    name = "oracle"

    def __init__(self, twin: Twin, events: list[DemandResponseEvent]) -> None:
        super().__init__(twin, events)
        self.loop = FastLoop(self.params, _settings(self.site, damping=False))
        self.plan: Plan | None = None
        self.bound: dict[str, object] | None = None
        self.bound_damped: dict[str, object] | None = None

    def set_actual(self, r: Realized) -> None:
        inputs, dr = oracle_inputs(self.twin, r, self.events, self.dr_credit_per_kwh)
        self.plan = solve_plan(inputs, time_limit_s=300.0)
        e_kwh = self.params.energy_j / 3.6e6
        self.bound = bound_bill(self.plan, inputs, e_kwh, self.site.tariff.currency)
        self.bound_damped = damped_bound(self.twin, r, inputs, e_kwh)
        self.bound["dr_baseline_rule"] = DR_BASELINE_RULE
        self.stats.dr = dr
        self.stats.plan_solves += 1
        self.stats.plan_solve_s.append(self.plan.solve_s)
        self.stats.plan_t_s = inputs.t_s.tolist()
        self.stats.plan_grid_w = self.plan.grid_w.tolist()
        self.stats.audit.append(
            {
                "t_s": float(r.t_s[0]),
                "actor": "oracle",
                "mode": "plan",
                "why": f"perfect-foresight LP over {inputs.t_s.size} steps: bound {self.bound['total']:,.0f} "
                f"{self.site.tariff.currency}",
            }
        )

    def controller(self) -> object:
        def step(t: float, grid: float, bess: F64, soc: F64, freq: float, island: bool, hall: F64 | None) -> F64:
            m = Measurements(t, grid, bess, soc, freq, island, hall)
            lo, hi = self.loop.unit_bounds(m, self.twin.dt_s)
            want = self.plan.unit_w(t) if self.plan is not None else np.zeros(lo.size)
            unit = np.minimum(np.maximum(want, lo), hi)
            self.loop.last_unit_w = unit
            self.stats.decisions += 1
            return unit

        return step
