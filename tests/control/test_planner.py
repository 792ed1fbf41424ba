"""The dispatch LP on tiny cases with answers worked out by hand."""

import numpy as np
import pytest

from powerplane.control.planner import PlanError, PlanInputs, check_inputs, solve_plan


def _inputs(**kw: object) -> PlanInputs:
    t = 4
    base = dict(
        t_s=np.arange(t) * 3600.0,
        dt_s=3600.0,
        load_w=np.full(t, 1e6),
        renewable_w=np.zeros(t),
        price_per_kwh=np.array([0.1, 0.1, 0.5, 0.5]),
        hall_load_w=np.full((t, 1), 1e6),
        busbar_w=np.array([10e6]),
        unit_hall=np.array([0]),
        power_max_w=np.array([1e6]),
        energy_j=np.array([1e6 * 3600.0]),  # 1 MWh
        soc0=np.array([0.0]),
        soc_min=np.array([0.0]),
        soc_max=np.array([1.0]),
        eta_charge=np.array([1.0]),
        eta_discharge=np.array([1.0]),
        soc_final=np.array([0.0]),
        demand_window_s=3600.0,
    )
    base.update(kw)
    return PlanInputs(**base)  # type: ignore[arg-type]


def _shaving(**kw: object) -> PlanInputs:
    """Flat price, a demand charge of 10/kW worth more than anything else, 1 MWh stored to spend."""
    base: dict[str, object] = dict(
        price_per_kwh=np.full(4, 0.1), demand_rate_per_kw=10.0, soc0=np.array([1.0]), soc_final=np.array([0.0])
    )
    base.update(kw)
    return _inputs(**base)


def test_arbitrage_charges_cheap_and_discharges_dear() -> None:
    plan = solve_plan(_inputs())
    # 1 MWh bought at 0.1 and sold back into the load at 0.5: charge in a cheap hour, discharge in a dear one.
    assert plan.bess_w[:2].sum() == pytest.approx(-1e6, abs=1)
    assert plan.bess_w[2:].sum() == pytest.approx(1e6, abs=1)
    # 3 MWh bought at 0.1 (2 h of load + 1 MWh stored), 1 MWh at 0.5 (2 h of load less the 1 MWh stored).
    assert plan.objective == pytest.approx(3000 * 0.1 + 1000 * 0.5, rel=1e-6)


def test_efficiency_and_wear_make_small_spreads_unprofitable() -> None:
    flat = _inputs(price_per_kwh=np.array([0.1, 0.1, 0.11, 0.11]), degradation_cost_per_kwh=0.02)
    plan = solve_plan(flat)
    assert np.abs(plan.bess_w).max() < 1.0  # a 0.01 spread does not pay 2 x 0.02 of wear


def test_demand_charge_shaves_the_peak() -> None:
    plan = solve_plan(_shaving(load_w=np.array([1e6, 1e6, 3e6, 1e6])))
    assert plan.peak_w == pytest.approx(2e6, rel=1e-6)  # 1 MW from the battery in the peak hour
    assert plan.bess_w[2, 0] == pytest.approx(1e6, rel=1e-6)


def test_soc_window_busbar_and_dr_limits_hold() -> None:
    p = _inputs(
        busbar_w=np.array([1.5e6]),
        dr_limit_w=np.array([np.inf, np.inf, 0.5e6, np.inf]),
        soc0=np.array([0.5]),
        soc_final=np.array([0.5]),
        soc_min=np.array([0.2]),
        soc_max=np.array([0.9]),
    )
    plan = solve_plan(p)
    assert plan.soc.min() >= 0.2 - 1e-9 and plan.soc.max() <= 0.9 + 1e-9
    # Charging adds to the hall's 1 MW load: at most 0.5 MW within a 1.5 MW busbar.
    assert plan.bess_w.min() >= -0.5e6 - 1
    assert plan.grid_w[2] <= 0.5e6 + 1


def test_bad_inputs_are_rejected_before_solving() -> None:
    with pytest.raises(ValueError, match="load_w"):
        check_inputs(_inputs(load_w=np.array([1.0, np.nan, 1.0, 1.0])))
    with pytest.raises(ValueError, match="one entry per battery"):
        check_inputs(_inputs(soc0=np.array([0.1, 0.2])))
    with pytest.raises(PlanError):
        solve_plan(_inputs(import_limit_w=0.5e6, renewable_w=np.zeros(4)))  # 1 MW load, 0.5 MW connection


def test_terminal_value_keeps_energy_worth_more_than_the_dear_hours() -> None:
    # Stored energy is worth 0.6 at the end, more than the 0.5 it would save: charge 1 MWh at 0.1 and keep it.
    plan = solve_plan(_inputs(soc_final=None, terminal_value_per_kwh=0.6))
    assert plan.soc[-1, 0] == pytest.approx(1.0, abs=1e-9)
    # 3 MWh at 0.1, 2 MWh at 0.5, minus 1 MWh left at 0.6.
    assert plan.objective == pytest.approx(300 + 1000 - 600, rel=1e-9)
    # Worth less (0.3) than the dear hours: the battery is emptied into them as in plain arbitrage.
    plan = solve_plan(_inputs(soc_final=None, terminal_value_per_kwh=0.3))
    assert plan.soc[-1, 0] == pytest.approx(0.0, abs=1e-9)
    assert plan.objective == pytest.approx(800, rel=1e-9)


def test_dr_credit_moves_the_discharge_into_the_event() -> None:
    base = np.array([np.nan, np.nan, 1e6, np.nan])
    plan = solve_plan(_inputs(dr_baseline_w=base, dr_credit_per_kwh=1.0))
    # Without the credit hours 2 and 3 are alike; with it the 1 MWh goes into the event hour: grid 0 there.
    assert plan.bess_w[2, 0] == pytest.approx(1e6, rel=1e-9)
    assert plan.grid_w[2] == pytest.approx(0.0, abs=1e-3)
    assert plan.info["dr_credited_kwh"] == pytest.approx(1000.0, rel=1e-9)
    # 3 MWh at 0.1 + 1 MWh at 0.5 - 1000 kWh credited at 1.0.
    assert plan.objective == pytest.approx(300 + 500 - 1000, rel=1e-9)


def test_peak_headroom_plans_demand_on_the_upper_band() -> None:
    # P50 load 1 MW flat, P90 1 MW higher in hour 2: the peak row counts 2 MW there, so 1 MWh stored is spent in
    # that hour (the demand charge at 10/kW is worth more than anything else here) and the planned peak is 1 MW.
    load = np.full(4, 1e6)
    head = np.array([0.0, 0.0, 1e6, 0.0])
    plan = solve_plan(_shaving(load_w=load, peak_headroom_w=head))
    assert plan.peak_w == pytest.approx(1e6, rel=1e-6)
    assert plan.bess_w[2, 0] == pytest.approx(1e6, rel=1e-6)
    # Energy is priced on P50: 4 MWh of load less the 1 MWh stored, at 0.1; plus 1,000 kW x 10 of demand.
    assert plan.objective == pytest.approx(300 + 10_000, rel=1e-6)
    # The same headroom in the contract rows: grid + headroom within the cap, or the penalty.
    capped = solve_plan(
        _inputs(
            load_w=load,
            soc0=np.array([1.0]),
            soc_final=np.array([0.0]),
            peak_headroom_w=head,
            grid_cap_w=1.2e6,
            cap_penalty_per_kwh=10.0,
        )
    )
    assert capped.grid_w[2] <= 0.2e6 + 1
    with pytest.raises(ValueError, match="peak_headroom_w"):
        check_inputs(_inputs(peak_headroom_w=np.zeros(3)))


def test_load_scenarios_hold_the_peak_with_recourse_paid_by_probability() -> None:
    # Each hour the load may be 0.5 MW higher (even odds). Keeping that room in every hour, as if it were certain,
    # takes 2 MWh of planned discharge to hold 1 MW, which a 1 MWh battery cannot give: the peak rises to 1.25 MW.
    # With scenarios the battery covers the excess only when it comes (0.5 MWh expected over the 4 hours... and
    # the worst case within the SOC window), so it holds a lower peak.
    headroom = solve_plan(_shaving(peak_headroom_w=np.full(4, 0.5e6)))
    assert headroom.peak_w == pytest.approx(1.25e6, rel=1e-6)
    eps = np.tile([0.0, 0.5e6], (4, 1))
    scen = solve_plan(_shaving(peak_scenarios_w=eps, peak_scenario_p=np.array([0.5, 0.5])))
    assert 1e6 <= scen.peak_w < headroom.peak_w - 0.1e6
    # The plan keeps energy back for the recourse: its expected use is reported, at most half the excess.
    assert 0 < scen.info["recourse_expected_kwh"] <= 0.5 * 0.5 * 4 * 1000 + 1e-6
    # A scenario above the median in some hours and below it in another plans too (no recourse where below).
    mixed = eps.copy()
    mixed[1, 1] = -0.2e6
    assert solve_plan(_shaving(peak_scenarios_w=mixed, peak_scenario_p=np.array([0.5, 0.5]))).status == "Optimal"
    # The same plan with no excess possible needs no recourse.
    calm = solve_plan(_shaving(peak_scenarios_w=np.zeros((4, 2)), peak_scenario_p=np.array([0.5, 0.5])))
    assert calm.info["recourse_expected_kwh"] == pytest.approx(0.0, abs=1e-6)
    assert calm.peak_w == pytest.approx(1e6 - 0.25e6, rel=1e-6)  # 1 MWh spread evenly over the 4 hours


def test_damping_wear_is_priced_around_the_plan() -> None:
    # No spread to trade on: the plan idles, and the damping's +-0.5 MW around it wears the battery all 4 hours.
    common = dict(
        price_per_kwh=np.full(4, 0.1), degradation_cost_per_kwh=0.02, soc0=np.array([0.5]), soc_final=np.array([0.5])
    )
    idle = solve_plan(_inputs(**common))
    damped = solve_plan(_inputs(damping_w=np.tile([-0.5e6, 0.5e6], (4, 1)), **common))
    assert damped.objective - idle.objective == pytest.approx(4 * 0.5 * 1000 * 0.02, rel=1e-6)
    # A plan that charges or discharges at least 0.5 MW carries the +-0.5 MW swing at no extra throughput; the
    # damped plan spreads its 1 MWh trade over the hours so that it never idles, at the same cost.
    dear = np.array([0.1, 0.1, 0.5, 0.5])
    trade = solve_plan(_inputs(price_per_kwh=dear, degradation_cost_per_kwh=0.02))
    trade_damped = solve_plan(
        _inputs(price_per_kwh=dear, degradation_cost_per_kwh=0.02, damping_w=np.tile([-0.5e6, 0.5e6], (4, 1)))
    )
    assert np.all(np.abs(trade_damped.bess_w) >= 0.5e6 - 1.0)
    assert trade_damped.objective == pytest.approx(trade.objective, rel=1e-6)
    with pytest.raises(ValueError, match="damping_w"):
        check_inputs(_inputs(damping_w=np.zeros((3, 2))))
    with pytest.raises(ValueError, match="probabilities"):
        check_inputs(_inputs(peak_scenarios_w=np.zeros((4, 2)), peak_scenario_p=np.array([0.5, 0.6])))


def test_marginal_cost_is_the_price_plus_the_demand_charge_where_the_peak_binds() -> None:
    # No battery: one more kWh costs its hour's price, and in the peak hour also the demand charge on it (1-h
    # windows: a kWh more in that hour is a kW more of peak).
    idle = dict(power_max_w=np.array([0.0]), soc0=np.array([0.0]), soc_final=np.array([0.0]))
    plan = solve_plan(_shaving(load_w=np.array([1e6, 1e6, 3e6, 1e6]), **idle))
    assert plan.marginal_per_kwh is not None
    assert plan.marginal_per_kwh == pytest.approx([0.1, 0.1, 10.1, 0.1], rel=1e-6)
    # With an ideal battery and no demand charge: the cheap hours cost their price and so do the dear ones
    # (the battery's one MWh is spent; more load there is bought at 0.5).
    plan = solve_plan(_inputs())
    assert plan.marginal_per_kwh == pytest.approx([0.1, 0.1, 0.5, 0.5], rel=1e-6)
