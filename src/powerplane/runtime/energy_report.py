"""What a policy run is judged on: the bill, demand against contract, grid friendliness, demand response and
throughput lost, in ``summary.json`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.physics import aging, tariff
from powerplane.runtime.energy import BESS_CELL_TEMP_C, DR_BASELINE_RULE, Policy
from powerplane.runtime.energy_inputs import wear_cost_per_kwh
from powerplane.telemetry.signal import band_energy_share, ramp_rates_w_per_s
from powerplane.twin.jobs import PRIORITY_NAMES
from powerplane.twin.twin import Twin

F64 = NDArray[np.float64]


def band_energy_mw2(power_w: F64, dt_s: float, band_hz: tuple[float, float] = (0.1, 3.0)) -> float:
    """Fluctuation energy of a power series in a frequency band [MW^2] (Welch PSD integrated over the band, after
    each segment's linear trend is removed, as in :func:`band_energy_share`)."""
    from scipy.signal import welch

    p = np.asarray(power_w, dtype=np.float64) / 1e6
    fs = 1.0 / dt_s
    if p.size < 32:
        return 0.0
    f, psd = welch(p, fs=fs, nperseg=int(min(p.size, max(16, round(409.6 * fs)))), detrend="linear")
    inside = (f >= band_hz[0]) & (f <= min(band_hz[1], fs / 2))
    return float(np.trapezoid(psd[inside], f[inside])) if inside.sum() > 1 else 0.0


def energy_summary(
    twin: Twin, s: dict[str, F64], policy: Policy, name: str, out: Path, bill: tariff.Bill
) -> dict[str, Any]:
    """The energy-management part of summary.json; ``bill`` is the run's tariff bill (computed once, by the
    summary of the twin run)."""
    site = twin.site
    dt = twin.dt_s
    t, grid = s["t_s"], s["grid_power_w"]
    tar = site.tariff
    contract_w = site.electrical.contract_demand_kw * 1e3
    # Battery wear: BLAST-Lite (or its shipped calibration) on each unit's SOC series.
    soc = s["bess_soc"] if s["bess_soc"].ndim == 2 else np.zeros((t.size, 0))
    temp = BESS_CELL_TEMP_C
    wear = [
        aging.age_run(t, soc[:, u], u_cfg.energy_kwh, site.energy.battery_capex_per_kwh, temp)
        for u, u_cfg in enumerate(site.bess)
    ]
    # The bill prices wear the way the planner does: throughput x the BLAST-Lite-calibrated cost per kWh. The
    # BLAST-Lite fade of a short run is reported beside it (its early-life sqrt-time terms overstate short runs).
    throughput_kwh = float(np.abs(s["bess_unit_power_w"]).sum() * dt / 3.6e6) if s["bess_unit_power_w"].size else 0.0
    degradation = throughput_kwh * wear_cost_per_kwh(site)
    # Energy left in (or taken from) the batteries at the end is worth the run's mean price: without this a policy
    # could look cheaper by ending emptier than it started.
    e_kwh = np.array([u.energy_kwh for u in site.bess])
    stored_change_kwh = float(((soc[-1] - soc[0]) * e_kwh).sum()) if soc.size else 0.0
    storage_adjustment = -stored_change_kwh * float(np.mean(s["price_per_kwh"]))
    _, win = tariff.window_average_w(t, grid, tar.demand_window_min * 60.0)
    over = win > contract_w * (1.0 + 1e-9)
    ramps = np.abs(ramp_rates_w_per_s(grid, dt, 1.0))
    ramp_limit = site.energy.ramp_limit_mw_per_s * 1e6
    share, band = band_energy_share(grid, dt)
    # Throughput lost to power caps and pauses, by priority class.
    jobs = twin.workload.jobs
    n = jobs.n
    lost: dict[str, float] = {}
    for code, cls in PRIORITY_NAMES.items():
        mask = jobs.priority[:n] == int(code)
        lost[cls] = float((jobs.cap_lost_gpu_s[:n][mask].sum() + jobs.pause_lost_gpu_s[:n][mask].sum()) / 3600.0)
    dr = []
    dr_credit = 0.0
    for ev in policy.stats.dr:
        inside = (t >= ev["start_s"]) & (t < ev["end_s"])
        if not inside.any():
            continue
        limit = ev["baseline_w"] * (1.0 - ev["reduction"])
        committed = ev["baseline_w"] * ev["reduction"]
        delivered = ev["baseline_w"] - float(grid[inside].mean())
        # Delivery is judged on the event's average and on its settlement intervals (15-min averages).
        _, win = tariff.window_average_w(t[inside], grid[inside], tar.demand_window_min * 60.0)
        below_kwh = float(np.maximum(ev["baseline_w"] - grid[inside], 0.0).sum() * dt / 3.6e6)
        dr_credit += below_kwh * policy.dr_credit_per_kwh
        dr.append(
            {
                **ev,
                "baseline_rule": DR_BASELINE_RULE,
                "baseline_rule_used": getattr(policy, "baseline_rule", "") or "prior days",
                "settlement": "15-min intervals (demand window); delivered_fraction is on the event's average",
                "committed_w": committed,
                "delivered_w": delivered,
                "min_interval_delivered_fraction": (
                    float((ev["baseline_w"] - win.max()) / committed) if win.size and committed > 0 else 0.0
                ),
                "energy_below_baseline_kwh": below_kwh,
                "credit": below_kwh * policy.dr_credit_per_kwh,
                "limit_w": limit,
                "mean_grid_w": float(grid[inside].mean()),
                "delivered_fraction": delivered / committed if committed > 0 else 0.0,
                "intervals": int(win.size),
                "share_of_intervals_at_or_below_limit": float(np.mean(win <= limit * 1.0005)) if win.size else 0.0,
                "share_of_seconds_at_or_below_limit": float(np.mean(grid[inside] <= limit * 1.0005)),
            }
        )
    st = policy.stats
    summary: dict[str, Any] = {
        "policy": name,
        "bill": {
            "currency": tar.currency,
            "energy": bill.energy_cost - bill.export_credit,
            "demand": bill.demand_charge + bill.contract_penalty,
            "degradation": degradation,
            "storage_adjustment": storage_adjustment,
            "dr_credit": dr_credit,
            "total": bill.total + degradation + storage_adjustment - dr_credit,
            "peak_15min_kw": bill.peak_demand_kw,
        },
        "demand": {
            "contract_kw": site.electrical.contract_demand_kw,
            "peak_15min_kw": float(win.max() / 1e3) if win.size else 0.0,
            "intervals": int(win.size),
            "intervals_over_contract": int(over.sum()),
            "share_within_contract": float(1.0 - over.mean()) if win.size else 1.0,
        },
        "grid_friendliness": {
            "band_hz": list(band),
            "band_energy_mw2": band_energy_mw2(grid, dt),
            "band_share": share,
            "ramp_limit_mw_per_s": site.energy.ramp_limit_mw_per_s,
            "ramp_violation_share": float(np.mean(ramps > ramp_limit)) if ramps.size else 0.0,
            "max_ramp_mw_per_s": float(ramps.max() / 1e6) if ramps.size else 0.0,
        },
        "demand_response": dr,
        "throughput_lost_gpu_hours": lost,
        "battery": {
            "throughput_kwh": throughput_kwh,
            "equivalent_full_cycles": [w.equivalent_full_cycles for w in wear],
            "capacity_fade": [w.capacity_fade for w in wear],
            "wear_model": "BLAST-Lite" if aging.blast_available() else "BLAST-Lite calibration (linear)",
        },
        "controller": {
            "decisions": st.decisions,
            "plan_solves": st.plan_solves,
            "plan_failures": st.plan_failures,
            "plan_solve_p95_ms": float(np.percentile(st.plan_solve_s, 95) * 1e3) if st.plan_solve_s else None,
            "fast_loop_p99_ms": float(np.percentile(st.cycle_s, 99) * 1e3) if st.cycle_s else None,
            "safe_mode_steps": st.safe_steps,
            "shed_steps": st.shed_steps,
        },
    }
    bound = getattr(policy, "bound", None)
    if bound is not None:
        summary["oracle_bound"] = bound
    damped = getattr(policy, "bound_damped", None)
    if damped is not None:
        summary["oracle_bound_damped"] = damped
    if st.audit:
        import json

        (out / "audit.jsonl").write_text("\n".join(json.dumps(a) for a in st.audit) + "\n")
    return summary


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(out: Path, summary: dict[str, Any], s: dict[str, F64], policy: Policy) -> None:
    """A self-contained HTML page: the numbers, the power stack, SOC per hall, prices and plan vs actual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = s["t_s"]
    h = (t - t[0]) / 3600.0
    step = max(1, t.size // 3000)
    imgs = []
    fig, ax = plt.subplots(figsize=(11, 4))
    for key, label in (
        ("facility_power_w", "facility"),
        ("it_power_w", "IT"),
        ("grid_power_w", "grid"),
        ("cooling_power_w", "cooling"),
        ("renewable_power_w", "renewables"),
        ("bess_power_w", "BESS"),
    ):
        ax.plot(h[::step], s[key][::step] / 1e6, lw=0.8, label=label)
    ax.axhline(summary["demand"]["contract_kw"] / 1e3, color="k", ls="--", lw=0.8, label="contract")
    ax.set_ylabel("MW")
    ax.set_xlabel("hours")
    ax.legend(ncol=4, fontsize=8)
    ax.set_title("Power stack")
    imgs.append(("Power stack", _figure_png(fig)))
    plt.close(fig)
    if s["bess_soc"].ndim == 2 and s["bess_soc"].shape[1]:
        fig, ax = plt.subplots(figsize=(11, 3))
        for u in range(s["bess_soc"].shape[1]):
            ax.plot(h[::step], s["bess_soc"][::step, u], lw=0.8, label=policy.site.bess[u].name)
        ax.set_ylabel("SOC")
        ax.set_ylim(0, 1)
        ax.legend(ncol=4, fontsize=8)
        ax.set_title("State of charge per hall battery")
        imgs.append(("SOC", _figure_png(fig)))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(11, 3))
    ax.step(h[::step], s["price_per_kwh"][::step], where="post", lw=0.8)
    ax.set_ylabel(f"price per kWh ({summary['bill']['currency']})")
    ax.set_title("Energy price")
    imgs.append(("Prices", _figure_png(fig)))
    plt.close(fig)
    if policy.stats.plan_t_s:
        fig, ax = plt.subplots(figsize=(11, 3))
        pt = (np.asarray(policy.stats.plan_t_s) - t[0]) / 3600.0
        keep = (pt >= 0) & (pt <= h[-1])
        ax.plot(pt[keep], np.asarray(policy.stats.plan_grid_w)[keep] / 1e6, ".", ms=2, label="planned grid")
        ax.plot(h[::step], s["grid_power_w"][::step] / 1e6, lw=0.6, label="actual grid")
        ax.set_ylabel("MW")
        ax.legend(fontsize=8)
        ax.set_title("Plan vs actual")
        imgs.append(("Plan vs actual", _figure_png(fig)))
        plt.close(fig)

    def table(d: dict[str, Any]) -> str:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
        return f"<table>{rows}</table>"

    sections = "".join(
        f"<h2>{html.escape(k.replace('_', ' '))}</h2>{table(v)}"
        for k, v in summary.items()
        if isinstance(v, dict)
        and k
        in (
            "bill",
            "oracle_bound",
            "oracle_bound_damped",
            "demand",
            "grid_friendliness",
            "throughput_lost_gpu_hours",
            "controller",
            "battery",
            "energy_mwh",
            "power_mw",
        )
    )
    dr = summary.get("demand_response") or []
    dr_html = "".join(table(e) for e in dr) if dr else "<p>No demand-response event in this run.</p>"
    figs = "".join(
        f'<h2>{html.escape(n)}</h2><img alt="{html.escape(n)}" src="data:image/png;base64,{b}">' for n, b in imgs
    )
    title = f"PowerPlane: {summary['scenario']}, policy {summary['policy']}, {summary['hours']:g} h"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}"
        "table{border-collapse:collapse;margin-bottom:1em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{sections}<h2>demand response</h2>{dr_html}{figs}</body></html>"
    )
    (out / "report.html").write_text(page)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)
