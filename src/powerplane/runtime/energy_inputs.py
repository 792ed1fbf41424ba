"""Planner inputs and fast-loop settings from the site, the twin's plant and a load forecast (the seam the
forecasts feed; re-exported by runtime/energy.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.control.fast import FastSettings
from powerplane.control.planner import PlanInputs
from powerplane.physics import aging, cooling, tariff, weather
from powerplane.twin.twin import Twin

F64 = NDArray[np.float64]
BESS_CELL_TEMP_C = 25.0  # cell temperature for wear pricing, in the planner and in the bill


def wear_cost_per_kwh(site: SiteConfig) -> float:
    """Battery wear per kWh of throughput [money/kWh] at the cell temperature the bill uses (the batteries sit in
    conditioned enclosures): the one price the planner, mpc's terminal value and the bill all charge."""
    return aging.throughput_cost_per_kwh(site.energy.battery_capex_per_kwh, BESS_CELL_TEMP_C)


def site_plan_fields(twin: Twin, demand_rate_scale: float) -> dict[str, Any]:
    """The :class:`PlanInputs` fields of the site itself, the same for the rolling planner and the oracle bound:
    the batteries (state now, power and energy, SOC window above the backup reserve, efficiencies), the hall
    busbars, the grid's import and export limits and prices, and the tariff's demand and contract terms, with the
    demand rates scaled by ``demand_rate_scale`` (the share of a month the plan is billed for) and wear priced at
    the cell temperature the bill uses (the batteries sit in conditioned enclosures)."""
    site, plant = twin.site, twin.plant
    b = plant.bess
    tar = site.tariff
    reserve = np.array([u.backup_reserve for u in site.bess])
    over_rate = (
        (tar.contract_billing.over_multiplier - 1.0) * tar.demand_charge_per_kw_month if tar.contract_billing else 0.0
    )
    return {
        "busbar_w": twin.topo.hall_busbar_limit_w,
        "unit_hall": plant.bess_unit_hall,
        "power_max_w": b.power_max_w,
        "energy_j": b.energy_j,
        "soc0": plant.bess_soc.copy(),
        "soc_min": np.maximum(b.soc_min, reserve),
        "soc_max": b.soc_max,
        "eta_charge": b.eta_charge,
        "eta_discharge": b.eta_discharge,
        "export_price_per_kwh": tar.export_price_per_kwh,
        "export_limit_w": plant.export_limit_w,
        "import_limit_w": (site.electrical.poi_limit_kw or np.inf) * 1e3,
        "demand_rate_per_kw": tar.demand_charge_per_kw_month * demand_rate_scale,
        "demand_window_s": tar.demand_window_min * 60.0,
        "contract_w": site.electrical.contract_demand_kw * 1e3,
        "contract_threshold": tar.contract_billing.threshold if tar.contract_billing else 1.05,
        "contract_over_rate_per_kw": over_rate * demand_rate_scale,
        "degradation_cost_per_kwh": wear_cost_per_kwh(site),
    }


def planner_inputs(
    twin: Twin,
    t: F64,
    it_w: F64,
    hall_it_w: F64,
    peak_so_far_w: float,
    events: list[tuple[float, float, float]],
    baseline_w: float | None,
    demand_rate_scale: float = 1.0,
    dr_credit_per_kwh: float = 0.0,
    dr_shed_max_w: float = 0.0,
    it_hi_w: F64 | None = None,
    it_scenarios_w: F64 | None = None,
    scenario_p: F64 | None = None,
    damping_w: F64 | None = None,
    terminal_value_per_kwh: float | None = None,
) -> PlanInputs:
    """Planner inputs from an IT-load forecast: facility load via the cooling model and the weather, renewables
    from the weather year, prices from the tariff, battery state from the plant. Demand-response events become
    commitments (grid at most baseline x (1 - reduction)), a credit per kWh below the baseline, and compute that
    may be shed during them (``dr_shed_max_w`` facility watts, at ``shed_cost_per_kwh``). With ``it_hi_w`` (the
    forecast's upper band, ``it_w`` its median) the facility load between the two is headroom the plan keeps in
    its peak and contract rows. With ``it_scenarios_w`` ([T, K] IT-load deviations from ``it_w``, probabilities
    ``scenario_p``) the peak and contract rows hold in every scenario instead, with recourse discharge.
    ``damping_w`` ([T, J] what the fast loop adds around the plan) prices wear on plan plus damping, and
    ``terminal_value_per_kwh`` values the energy left at the end instead of the terminal SOC floor."""
    site = twin.site
    plant = twin.plant
    mid = t + 0.5 * (t[1] - t[0] if t.size > 1 else 900.0)
    temp = plant.outdoor_temp_c(mid)
    cop = cooling.cop(temp, plant.cop_curve)
    aux = float(plant.bess.aux_power_w.sum())
    per_it = 1.0 + plant.other_fraction + 1.0 / np.maximum(cop, 0.5)
    load = it_w * per_it + aux
    headroom = None if it_hi_w is None else np.maximum(it_hi_w - it_w, 0.0) * per_it
    scenarios = None if it_scenarios_w is None else it_scenarios_w * per_it[:, None]
    if scenarios is not None:
        headroom = None
    hour = weather.hour_of_year(mid, site.timezone)
    renew = weather.interpolate_hourly(plant.solar_hourly, hour) + weather.interpolate_hourly(plant.wind_hourly, hour)
    price = tariff.price_per_kwh(mid, site.tariff, site.timezone)
    step = float(t[1] - t[0]) if t.size > 1 else site.energy.planner_step_min * 60.0
    dr = np.full(t.size, np.inf)
    dr_base = np.full(t.size, np.nan)
    for start, end, red in events:
        inside = (mid >= start) & (mid < end)
        if inside.any():
            base = baseline_w if baseline_w is not None else float(np.mean(load[inside]))
            dr[inside] = base * (1.0 - red)
            dr_base[inside] = base
    in_event = np.isfinite(dr)
    contract = site.electrical.contract_demand_kw * 1e3
    return PlanInputs(
        t_s=t,
        dt_s=step,
        load_w=load,
        renewable_w=renew,
        price_per_kwh=price,
        hall_load_w=hall_it_w,
        soc_final=None,
        peak_so_far_w=peak_so_far_w,
        **site_plan_fields(twin, demand_rate_scale),
        shed_max_w=np.where(in_event, dr_shed_max_w, 0.0) if dr_shed_max_w > 0 and in_event.any() else None,
        shed_cost_per_kwh=site.energy.shed_cost_per_kwh,
        # Plan below the fast loop's contract limit, so that following the plan never forces compute shedding.
        grid_cap_w=contract * (site.energy.contract_margin - 0.02),
        dr_limit_w=dr if in_event.any() else None,
        dr_baseline_w=dr_base if in_event.any() else None,
        dr_credit_per_kwh=dr_credit_per_kwh,
        peak_headroom_w=headroom,
        peak_scenarios_w=scenarios,
        peak_scenario_p=None if scenarios is None else scenario_p,
        damping_w=damping_w,
        terminal_value_per_kwh=terminal_value_per_kwh,
    )


def _settings(site: SiteConfig, damping: bool) -> FastSettings:
    e = site.energy
    el = site.electrical
    return FastSettings(
        contract_w=el.contract_demand_kw * 1e3,
        contract_margin=e.contract_margin,
        contract_instant_factor=e.contract_instant_factor,
        demand_window_s=site.tariff.demand_window_min * 60.0,
        poi_limit_w=(el.poi_limit_kw or np.inf) * 1e3,
        export_limit_w=el.export_limit_kw * 1e3,
        ramp_limit_w_per_s=e.ramp_limit_mw_per_s * 1e6,
        damping_tau_s=e.damping_time_constant_s,
        damping=damping,
        nominal_hz=float(site.grid.frequency_hz),
        deadband_hz=e.frequency_deadband_hz,
        droop=e.frequency_droop,
        frequency_share=e.frequency_response_share,
        backup_reserve=np.array([u.backup_reserve for u in site.bess]),
        stale_after_s=e.stale_after_s,
        safe_hold_s=e.safe_hold_s,
    )
