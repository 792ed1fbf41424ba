"""Plain-JSON views of a live cycle over the bus: the site's power flow and the batteries from the plant frame's
site and bess levels (the grid meter, facility, IT and renewable power, the batteries' power and SOC), and the
bus's own status. Built by :class:`~powerplane.runtime.live_bus.BusLiveRuntime` into its published state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from powerplane.runtime.live_view import FLOW_FIELDS, clean
from powerplane.telemetry.snapshot import Snapshot

if TYPE_CHECKING:
    from powerplane.runtime.live_bus import BusLiveRuntime

SITE_FIELDS = {  # plant frame site metric -> site view field
    "meter_power_w": "grid_power_w",
    "facility_power_w": "facility_power_w",
    "it_power_w": "it_power_w",
    "renewable_power_w": "renewable_power_w",
    "frequency_hz": "frequency_hz",
    "outdoor_temp_c": "outdoor_temp_c",
}


def reading(level: dict[str, Any], name: str) -> float:
    v = level.get(name)
    return float(np.asarray(v, dtype=np.float64).reshape(-1)[0]) if v is not None and np.size(v) else float("nan")


def unit_readings(level: dict[str, Any], name: str, n: int) -> np.ndarray:
    v = level.get(name)
    a = np.asarray(v, dtype=np.float64).reshape(-1) if v is not None else np.zeros(0)
    return a if a.size == n else np.full(n, np.nan)


def _f(x: float, nd: int = 3) -> float | None:
    return round(float(x), nd) if np.isfinite(x) else None


def bus_site_view(rt: BusLiveRuntime, snap: Snapshot) -> dict[str, Any]:
    lv = rt._frame.levels if rt._frame is not None else {}
    site = lv.get("site", {})
    out: dict[str, Any] = {k: None for k in FLOW_FIELDS}
    for src, dst in SITE_FIELDS.items():
        out[dst] = _f(reading(site, src))
    bess = unit_readings(lv.get("bess", {}), "power_w", rt.energy.n_units)
    out["bess_power_w"] = _f(float(bess.sum()))
    it, fac = reading(site, "it_power_w"), reading(site, "facility_power_w")
    out["pue"] = _f(fac / it, 4) if it > 0 and np.isfinite(fac) else None
    out["islanded"] = False
    out["price_per_kwh"] = _f(rt._last_price, 5)
    out["contract_w"] = rt.site.electrical.contract_demand_kw * 1e3
    out["demand_15min_w"] = _f(rt.demand_15min_w())
    out["month_peak_w"] = _f(rt.energy.month_peak_w)
    out["nominal_frequency_hz"] = float(rt.site.grid.frequency_hz)
    soc = unit_readings(lv.get("bess", {}), "soc", rt.energy.n_units)
    out["bess_soc_mean"] = _f(float(soc.mean()), 4) if soc.size else None
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
    out["source"] = "bus"
    out["planner"] = rt.energy.planner_status
    return out


def bus_bess_rows(rt: BusLiveRuntime) -> list[dict[str, Any]]:
    lv = rt._frame.levels if rt._frame is not None else {}
    n = rt.energy.n_units
    power, soc = unit_readings(lv.get("bess", {}), "power_w", n), unit_readings(lv.get("bess", {}), "soc", n)
    p = rt.energy.params
    return [
        {
            "unit": unit.name,
            "hall": unit.hall,
            "power_w": _f(power[i]),
            "soc": _f(soc[i], 4),
            "power_max_w": _f(p.power_max_w[i]),
            "energy_kwh": _f(p.energy_j[i] / 3.6e6, 1),
            "soc_min": _f(max(float(p.soc_min[i]), float(unit.backup_reserve)), 3),
            "soc_max": _f(p.soc_max[i], 3),
            "setpoint_w": _f(rt.bess_setpoint_w[i]),
            "taking_setpoints": not bool(rt._bess_failing[i]),
        }
        for i, unit in enumerate(rt.site.bess)
    ]


def bus_status(rt: BusLiveRuntime) -> dict[str, Any]:
    src = rt.bus.source
    return clean(
        {
            "url": rt.bus.url,
            "reported_share": round(src.reported_share(), 4),
            "rollups": src.rollups,
            "frames": src.frames,
            "rejected": dict(src.rejected),
            "processes": {name: p.poll() is None for name, p in rt.bus.processes.items()},
            "bess_commands": dict(rt.bess_commands),
            "command_audit": str(rt.bus.actuator.audit_path) if rt.bus.actuator.audit_path else None,
            "log_dir": str(rt.bus.log_dir) if rt.bus.log_dir else None,
        }
    )
