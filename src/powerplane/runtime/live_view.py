"""Plain-JSON views of one live cycle: the site's power flow, the batteries, the plan and demand response.

Built once per cycle by :class:`~powerplane.runtime.live.LiveRuntime` into its published state.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from powerplane.runtime.energy import ManagedPolicy, Policy
from powerplane.runtime.simulate import SITE_COLUMNS
from powerplane.telemetry.snapshot import Snapshot
from powerplane.twin.twin import TwinBlock

if TYPE_CHECKING:
    from powerplane.runtime.live import LiveRuntime
    from powerplane.runtime.live_core import LiveCore

# The plant's power flows as `simulate` writes them to site.parquet, plus frequency and outdoor temperature.
FLOW_FIELDS = (*SITE_COLUMNS, "frequency_hz", "outdoor_temp_c")


def clean(x: Any) -> Any:
    """``x`` with NumPy scalars and arrays made plain and non-finite floats made None (valid JSON)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, np.generic):
        return clean(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, str | int | bool):
        return x
    return str(x)


def _f(x: Any, nd: int = 3) -> float | None:
    v = float(x)
    return round(v, nd) if math.isfinite(v) else None


def site_view(rt: LiveRuntime, snap: Snapshot, block: TwinBlock) -> dict[str, Any]:
    p = block.plant
    out: dict[str, Any] = {k: _f(getattr(p, k)[-1]) for k in FLOW_FIELDS}
    it = float(p.it_power_w[-1])
    soc = float(np.mean(p.bess_soc[-1])) if p.bess_soc.shape[1] else float("nan")
    return site_tail(
        out,
        rt,
        snap,
        pue=_f(float(p.facility_power_w[-1]) / it, 4) if it > 0 else None,
        islanded=bool(p.islanded[-1]),
        month_peak_w=getattr(rt.policy, "month_peak_w", float("nan")),
        soc_mean=soc,
    )


def site_tail(
    out: dict[str, Any],
    rt: LiveCore,
    snap: Snapshot,
    *,
    pue: float | None,
    islanded: bool,
    month_peak_w: float,
    soc_mean: float,
) -> dict[str, Any]:
    """The site view's fields after the power flow, the same for every runtime: PUE, price, contract, demand
    window, peak, SOC and the GPU rollups of the snapshot (filled into ``out``, which is returned)."""
    out["pue"] = pue
    out["islanded"] = islanded
    out["price_per_kwh"] = _f(getattr(rt, "_last_price", float("nan")), 5)
    out["contract_w"] = rt.site.electrical.contract_demand_kw * 1e3
    out["demand_15min_w"] = _f(rt.demand_15min_w())
    out["month_peak_w"] = _f(month_peak_w)
    out["nominal_frequency_hz"] = float(rt.site.grid.frequency_hz)
    out["bess_soc_mean"] = _f(soc_mean, 4)
    roll = snap.rollups.get("site", {})
    if "gpu.power_w" in roll:
        r = roll["gpu.power_w"]
        out["gpu_power_w"] = _f(r.sum[0])
        out["gpu_coverage"] = _f(r.coverage[0], 4)
    if "gpu.temp_c" in roll:
        out["gpu_temp_max_c"] = _f(roll["gpu.temp_c"].max[0], 2)
    if "gpu.util_pct" in roll:
        out["gpu_util_mean_pct"] = _f(roll["gpu.util_pct"].mean[0], 2)
    out["rejected_total"] = int(sum(snap.rejected_total.values()))
    return out


def bess_rows(rt: LiveRuntime, block: TwinBlock) -> list[dict[str, Any]]:
    p = block.plant
    b = rt.twin.plant.bess
    halls = rt.topology.hall_names
    rows = []
    for i, unit in enumerate(rt.site.bess):
        rows.append(
            {
                "unit": unit.name,
                "hall": halls[int(rt.twin.plant.bess_unit_hall[i])],
                "power_w": _f(p.bess_unit_power_w[-1, i]),
                "soc": _f(p.bess_soc[-1, i], 4),
                "power_max_w": _f(b.power_max_w[i]),
                "energy_kwh": _f(b.energy_j[i] / 3.6e6, 1),
                "soc_min": _f(max(float(b.soc_min[i]), float(unit.backup_reserve)), 3),
                "soc_max": _f(b.soc_max[i], 3),
                "setpoint_w": _f(rt.twin.plant.bess_setpoint_w[i]),
            }
        )
    return rows


def plan_view(policy: Policy, now_s: float) -> dict[str, Any] | None:
    """The dispatch plan from an hour ago to the end of its horizon: grid target, battery total, mean SOC."""
    plan = getattr(policy, "plan", None)
    if plan is None:
        return None
    keep = plan.t_s >= now_s - 3600.0
    return {
        "t_s": plan.t_s[keep].tolist(),
        "dt_s": float(plan.dt_s),
        "grid_w": [_f(x) for x in plan.grid_w[keep]],
        "bess_w": [_f(x) for x in plan.bess_w[keep].sum(axis=1)],
        "soc_mean": [_f(x, 4) for x in plan.soc[keep].mean(axis=1)] if plan.soc.shape[1] else [],
        "peak_w": _f(plan.peak_w),
        "status": plan.status,
        "solve_s": _f(plan.solve_s, 4),
        "solves": policy.stats.plan_solves,
        "failures": policy.stats.plan_failures,
        "it_source": getattr(policy, "it_source", "persistence"),  # the IT load the plan counts on
    }


def dr_view(policy: Policy, now_s: float, site: dict[str, Any]) -> dict[str, Any]:
    """Demand-response status: the active event (baseline, limit, delivered reduction) and the ones ahead."""
    managed = isinstance(policy, ManagedPolicy)
    upcoming = [{"start_s": s, "end_s": e, "reduction": r} for s, e, r in getattr(policy, "events", []) if e > now_s]
    out: dict[str, Any] = {"supported": managed, "active": False, "events": upcoming[:10]}
    if isinstance(policy, ManagedPolicy) and policy.active_event is not None:
        s, e, r = policy.active_event
        base = policy.baseline_w
        grid = site.get("grid_power_w")
        out.update(
            {
                "active": True,
                "start_s": s,
                "end_s": e,
                "reduction": r,
                "baseline_w": _f(base) if base is not None else None,
                "limit_w": _f(policy.loop.dr_limit_w) if policy.loop.dr_limit_w is not None else None,
                "delivered": _f(1.0 - grid / base, 4) if base and grid is not None else None,
            }
        )
    return out
