"""JSON documents of the API, built from the runtime's published state (never from the live objects it mutates,
except the bounded per-GPU ring and the history, which are read-only here)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.physics import gpu_power
from powerplane.runtime.live_core import LiveCore
from powerplane.runtime.live_state import LiveState
from powerplane.runtime.live_view import clean
from powerplane.telemetry.snapshot import Quality
from powerplane.topology import Topology
from powerplane.twin.jobs import KIND_NAMES, PRIORITY_NAMES, STATE_NAMES, State

LEVELS = ("site", "hall", "row", "rack", "node", "gpu", "bess")
FLOOR_METRICS = {  # metric -> (unit, low, high) of the uint8 scale
    "power_w": ("W", 0.0, None),
    "temp_c": ("C", 20.0, 100.0),
    "util_pct": ("%", 0.0, 100.0),
}
MISSING = 255


def topology_doc(rt: LiveCore) -> dict[str, Any]:
    t: Topology = rt.topology
    return {
        "site": t.site_name,
        "scenario": rt.opts.scenario,
        "counts": {lvl: t.count(lvl) for lvl in ("hall", "row", "rack", "node", "gpu")},
        "halls": t.hall_names,
        "rows": t.row_names,
        "racks": t.rack_names,
        "nodes": t.node_names,
        "gpu_models": t.gpu_models,
        "gpu_model": t.gpu_model_idx.tolist(),
        "gpu_node": t.gpu_node.tolist(),
        "node_rack": t.node_rack.tolist(),
        "rack_row": t.rack_row.tolist(),
        "row_hall": t.row_hall.tolist(),
        "hall_busbar_limit_w": t.hall_busbar_limit_w.tolist(),
        "bess": [
            {"unit": u.name, "hall": u.hall, "power_kw": u.power_kw, "energy_kwh": u.energy_kwh} for u in rt.site.bess
        ],
        "contract_w": rt.site.electrical.contract_demand_kw * 1e3,
        "currency": rt.site.tariff.currency,
        "timezone": rt.site.timezone,
    }


def power_scale_w(rt: LiveCore) -> float:
    tdp = [gpu_power.GPU_PROFILES[m].tdp_w for m in rt.topology.gpu_models if m in gpu_power.GPU_PROFILES]
    return float(max(tdp) if tdp else 1000.0)


def floor_doc(rt: LiveCore, state: LiveState, metric: str) -> dict[str, Any]:
    """Every GPU's ``metric`` quantized to one byte (0-254 over [lo, hi], 255: no valid reading), base64."""
    if metric not in FLOOR_METRICS:
        raise ValueError(f"unknown floor metric {metric!r}; valid: {', '.join(FLOOR_METRICS)}")
    unit, lo, hi = FLOOR_METRICS[metric]
    high = power_scale_w(rt) if hi is None else hi
    gl = state.snapshot.levels["gpu"]
    v = gl.values[metric]
    ok = (gl.quality[metric] == Quality.OK) & np.isfinite(v)
    q = np.clip(np.rint((v - lo) / (high - lo) * 254.0), 0, 254)
    q = np.where(ok, q, MISSING).astype(np.uint8)
    return {
        "t_s": state.t_s,
        "version": state.version,
        "metric": metric,
        "unit": unit,
        "lo": lo,
        "hi": high,
        "n": int(q.size),
        "missing": MISSING,
        "b64": base64.b64encode(q.tobytes()).decode(),
        "hot": _hot(rt, v, ok, metric),
    }


def _hot(rt: LiveCore, v: NDArray[np.float64], ok: NDArray[np.bool_], metric: str, k: int = 8) -> list[dict[str, Any]]:
    """The ``k`` highest GPUs: the hot spots named beside the heatmap."""
    x = np.where(ok, v, -np.inf)
    k = min(k, x.size)
    idx = np.argpartition(-x, k - 1)[:k]
    idx = idx[np.argsort(-x[idx])]
    t = rt.topology
    return [
        {"gpu": int(i), "node": t.node_names[int(t.gpu_node[i])], "value": round(float(x[i]), 2)}
        for i in idx.tolist()
        if np.isfinite(x[i])
    ]


def overview_doc(state: LiveState) -> dict[str, Any]:
    """The small per-cycle document the stream sends: site flow, money, batteries, DR, cycle, alert counts."""
    alerts = state.alerts
    counts: dict[str, int] = {}
    if alerts is not None:
        for a in alerts:
            if a.get("state") == "firing":
                counts[str(a.get("severity"))] = counts.get(str(a.get("severity")), 0) + 1
    c = state.cycle
    return clean(
        {
            "version": state.version,
            "t_s": state.t_s,
            "scenario": state.scenario,
            "policy": state.policy,
            "timezone": state.timezone,
            "site": state.site,
            "money": state.money,
            "bess": state.bess,
            "dr": state.dr,
            "alerts": {"status": state.alert_status, "firing": counts, "active": len(alerts or [])},
            "forecast_status": state.forecast_status,
            "cycle": {
                "cycles": c.cycles,
                "cycle_ms": round(c.cycle_ms, 2),
                "cycle_ms_p95": round(c.cycle_ms_p95, 2),
                "lag_s": round(c.lag_s, 3),
                "speed": c.speed,
                "period_s": c.period_s,
                "errors": c.errors,
                "last_error": c.last_error,
            },
            "jobs": _job_counts(state),
            "audit_count": state.audit_count,
        }
    )


def _job_counts(state: LiveState) -> dict[str, int]:
    s = state.jobs["state"]
    return {
        "running": int(np.count_nonzero((s != State.QUEUED) & (s != State.DONE))),
        "queued": int(np.count_nonzero(s == State.QUEUED)),
        "capped": len(state.job_caps_w),
    }


def silences(rt: LiveCore) -> list[dict[str, Any]]:
    """The alert engine's active silences, soonest to end first ([] without an engine). The engine may sit behind
    the ops stack (``OpsStack.engine``); its ``silence_list`` reads under the engine's own lock."""
    engine = rt.alerts
    lister = getattr(engine, "silence_list", None) or getattr(getattr(engine, "engine", None), "silence_list", None)
    if lister is None:
        return []
    return sorted(lister(), key=lambda s: (s["ends_s"], s["id"]))


def energy_doc(rt: LiveCore, state: LiveState) -> dict[str, Any]:
    return clean(
        {
            "t_s": state.t_s,
            "policy": state.policy,
            "bess": state.bess,
            "plan": state.plan,
            "dr": state.dr,
            "site": state.site,
            "series": rt.series.tail(state.t_s - 6 * 3600.0),
            "prices": state.prices,
            "forecast": state.forecast,
            "forecast_status": state.forecast_status,
        }
    )


def jobs_doc(state: LiveState, status: str = "all", limit: int = 200, offset: int = 0, sort: str = "power") -> dict:
    """Running and queued jobs with GPUs, power, energy, cost, class and cap; sorted, paged."""
    snap = state.snapshot
    j = state.jobs
    ids = j["job"]
    st = j["state"]
    running = (st != State.QUEUED) & (st != State.DONE)
    sel = {"all": np.ones(ids.size, bool), "running": running, "queued": st == State.QUEUED}.get(status)
    if sel is None:
        raise ValueError("status must be all, running or queued")
    power = np.full(ids.size, np.nan)
    cost = np.full(ids.size, np.nan)
    pos = np.searchsorted(ids, snap.job_ids)
    inside = (pos < ids.size) & (ids[np.minimum(pos, ids.size - 1)] == snap.job_ids)
    power[pos[inside]] = snap.job_power_w[inside]
    cost[pos[inside]] = snap.job_cost[inside]
    order_key = {
        "power": -np.nan_to_num(power, nan=-1.0),
        "gpus": -j["n_gpus"].astype(np.float64),
        "submit": j["submit_s"],
        "priority": j["priority"].astype(np.float64),
    }.get(sort)
    if order_key is None:
        raise ValueError("sort must be power, gpus, submit or priority")
    rows_idx = np.flatnonzero(sel)
    rows_idx = rows_idx[np.argsort(order_key[rows_idx], kind="stable")]
    page = rows_idx[offset : offset + limit]
    rows = []
    for i in page.tolist():
        jid = int(ids[i])
        rows.append(
            {
                "job": jid,
                "name": state.job_names[i],
                "kind": KIND_NAMES.get(int(j["kind"][i]), str(j["kind"][i])),  # type: ignore[call-overload]
                "priority": PRIORITY_NAMES.get(int(j["priority"][i]), str(j["priority"][i])),  # type: ignore[call-overload]
                "state": STATE_NAMES.get(int(st[i]), str(st[i])),  # type: ignore[call-overload]
                "gpus": int(j["n_gpus"][i]),
                "power_w": float(power[i]),
                "energy_kwh": float(j["energy_j"][i]) / 3.6e6,
                "cost": float(cost[i]),
                "cap_w": state.job_caps_w.get(jid),
                "deferrable": bool(j["deferrable"][i]),
                "submit_s": float(j["submit_s"][i]),
                "start_s": float(j["start_s"][i]),
            }
        )
    return clean(
        {
            "t_s": state.t_s,
            "currency": state.currency,
            "counts": _job_counts(state),
            "total": int(rows_idx.size),
            "offset": offset,
            "jobs": rows,
            "power_w_total": float(np.nansum(power[running])),
            "note": state.extra.get("jobs_note"),  # e.g. over the bus: why there is no job data
        }
    )


def level_doc(rt: LiveCore, state: LiveState, level: str, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
    """The snapshot at one level: every metric read at that level and the GPU rollups, one row per entity."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    snap = state.snapshot
    if level == "bess":
        return clean({"t_s": state.t_s, "level": level, "rows": state.bess})
    names = rt.topology.names(level)  # type: ignore[arg-type]
    lo, hi = offset, min(offset + limit, len(names))
    cols: dict[str, NDArray[np.float64]] = {}
    if level in snap.levels:
        ld = snap.levels[level]
        for m, v in ld.values.items():
            cols[m] = np.where(ld.quality[m] == Quality.OK, v, np.nan) if m in ld.quality else v
    for key, r in snap.rollups.get(level, {}).items():
        base = key.replace(".", "_")
        cols[f"{base}_sum" if key.endswith("power_w") else f"{base}_max" if "temp" in key else f"{base}_mean"] = (
            r.sum if key.endswith("power_w") else r.max if "temp" in key else r.mean
        )
        if key == "gpu.power_w":
            cols["gpu_coverage"] = r.coverage
    rows = []
    for i in range(lo, hi):
        row: dict[str, Any] = {"index": i, "name": names[i]}
        for m, v in cols.items():
            row[m] = round(float(v[i]), 3)
        rows.append(row)
    return clean({"t_s": state.t_s, "level": level, "total": len(names), "offset": lo, "rows": rows})


def entity_doc(rt: LiveCore, state: LiveState, level: str, index: int) -> dict[str, Any]:
    """One rack, node or GPU: its readings, its place in the tree and its children (drill-down)."""
    t = rt.topology
    if level not in ("rack", "node", "gpu"):
        raise ValueError("drill-down levels are rack, node and gpu")
    n = t.count(level)  # type: ignore[arg-type]
    if not 0 <= index < n:
        raise LookupError(f"no {level} {index} (0..{n - 1})")
    snap = state.snapshot
    gl = snap.levels["gpu"]

    def gpu_row(g: int) -> dict[str, Any]:
        row: dict[str, Any] = {"gpu": g, "uuid": t.gpu_uuids[g], "model": t.gpu_models[int(t.gpu_model_idx[g])]}
        for m in ("power_w", "temp_c", "util_pct", "power_cap_w", "sm_clock_mhz", "energy_mj", "throttle_reasons"):
            if m in gl.values:
                ok = gl.quality[m][g] == Quality.OK if m in gl.quality else True
                row[m] = float(gl.values[m][g]) if ok else None
        job = int(rt.twin.workload.gpu_job[g])
        row["job"] = job if job >= 0 else None
        return row

    if level == "gpu":
        node = int(t.gpu_node[index])
    elif level == "node":
        node = index
    else:
        node = -1
    rack = int(t.node_rack[node]) if node >= 0 else index
    row = int(t.rack_row[rack])
    hall = int(t.row_hall[row])
    path = {"hall": t.hall_names[hall], "row": t.row_names[row], "rack": t.rack_names[rack]}
    if node >= 0:
        path["node"] = t.node_names[node]
    out: dict[str, Any] = {
        "level": level,
        "index": index,
        "path": path,
        "t_s": state.t_s,
        "indices": {"hall": hall, "row": row, "rack": rack, "node": node},
    }
    rack_doc = level_doc(rt, state, "rack", rack, 1)["rows"][0]
    out["rack"] = rack_doc
    nodes = np.flatnonzero(t.node_rack == rack)
    node_rows = level_doc(rt, state, "node", int(nodes[0]), int(nodes.size))["rows"]
    out["nodes"] = node_rows
    if node >= 0:
        gpus = np.flatnonzero(t.gpu_node == node)
        out["node"] = next(r for r in node_rows if r["index"] == node)
        out["gpus"] = [gpu_row(int(g)) for g in gpus]
    if level == "gpu":
        out["gpu"] = gpu_row(index)
        ts, vals = rt.ring.window(gpus=np.array([index]))
        out["series"] = {"t_s": ts.tolist(), **{m: v[:, 0].astype(np.float64).tolist() for m, v in vals.items()}}
    return clean(out)
