"""Plain-JSON views of a live cycle over the bus: the site's power flow and the batteries from the plant frame's
site and bess levels (the grid meter, facility, IT and renewable power, the batteries' power and SOC), and the
bus's own status. Built by :class:`~powerplane.runtime.live_bus.BusLiveRuntime` into its published state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from powerplane.runtime.live_view import FLOW_FIELDS, _f, clean, site_tail
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


def bus_site_view(rt: BusLiveRuntime, snap: Snapshot) -> dict[str, Any]:
    lv = rt._frame.levels if rt._frame is not None else {}
    site = lv.get("site", {})
    out: dict[str, Any] = {k: None for k in FLOW_FIELDS}
    for src, dst in SITE_FIELDS.items():
        out[dst] = _f(reading(site, src))
    bess = unit_readings(lv.get("bess", {}), "power_w", rt.energy.n_units)
    out["bess_power_w"] = _f(float(bess.sum()))
    it, fac = reading(site, "it_power_w"), reading(site, "facility_power_w")
    soc = unit_readings(lv.get("bess", {}), "soc", rt.energy.n_units)
    site_tail(
        out,
        rt,
        snap,
        pue=_f(fac / it, 4) if it > 0 and np.isfinite(fac) else None,
        islanded=False,
        month_peak_w=rt.energy.month_peak_w,
        soc_mean=float(soc.mean()) if soc.size else float("nan"),
    )
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
