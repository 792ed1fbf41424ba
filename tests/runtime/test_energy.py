"""End-to-end energy management on the small site: policies, limits, demand response, report."""

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow.parquet as pq
import pytest

from powerplane.config import load_scenario
from powerplane.runtime import energy_mpc
from powerplane.runtime.energy import DR_CREDIT_PER_KWH, parse_dr
from powerplane.runtime.energy_mpc import MpcPolicy
from powerplane.runtime.simulate import SimulateOptions, simulate


def test_parse_dr() -> None:
    ev = parse_dr("2026-07-15T15:00/3h/-25%", "America/Chicago")
    assert ev.start == "2026-07-15T15:00" and ev.duration_h == 3.0 and ev.reduction == pytest.approx(0.25)
    with pytest.raises(ValueError, match="demand-response"):
        parse_dr("tomorrow afternoon", "UTC")


@pytest.fixture(scope="module")
def mpc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("e") / "mpc"
    site, _ = load_scenario("small")
    start = site.start[:10]
    s = simulate(SimulateOptions("small", 1.5, out=out, policy="mpc", dr=(f"{start}T00:45/0.5h/-25%",)))
    return out, s


def test_mpc_run_writes_bill_report_and_audit(mpc_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, _ = mpc_run
    assert {"report.html", "audit.jsonl", "summary.json", "bess.parquet"} <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "summary.json").read_text())
    for key in ("bill", "demand", "grid_friendliness", "demand_response", "throughput_lost_gpu_hours", "controller"):
        assert key in saved
    assert saved["bill"]["total"] == pytest.approx(
        saved["bill"]["energy"]
        + saved["bill"]["demand"]
        + saved["bill"]["degradation"]
        + saved["bill"]["storage_adjustment"]
        - saved["bill"]["dr_credit"]
    )
    (ev,) = saved["demand_response"]
    # The credit is the energy below the baseline during the event at the policy's rate.
    assert saved["bill"]["dr_credit"] == pytest.approx(ev["energy_below_baseline_kwh"] * DR_CREDIT_PER_KWH)
    assert ev["baseline_rule_used"] == "pre-event hour"  # the run starts the day of the event: no prior day
    html = (out / "report.html").read_text()
    for heading in ("Power stack", "SOC", "Prices", "Plan vs actual", "bill", "demand response"):
        assert f"<h2>{heading}</h2>" in html, heading
    assert saved["controller"]["plan_solves"] >= 6 and saved["controller"]["plan_failures"] == 0
    assert saved["energy_balance_error"] < 1e-3


def test_no_command_exceeds_the_battery_limits(mpc_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, _ = mpc_run
    site, _ = load_scenario("small")
    unit = site.bess[0]
    b = pq.read_table(out / "bess.parquet").to_pandas()
    assert b.power_w.abs().max() <= unit.power_kw * 1e3 + 1e-6
    assert b.soc.min() >= unit.soc_min - 1e-9 and b.soc.max() <= unit.soc_max + 1e-9
    assert b.power_w.abs().max() > 0  # it did act


def test_demand_response_delivered_without_touching_core_jobs(mpc_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    _, s = mpc_run
    (ev,) = s["demand_response"]
    assert ev["delivered_fraction"] >= 0.97
    assert ev["share_of_intervals_at_or_below_limit"] == 1.0
    assert s["throughput_lost_gpu_hours"]["core"] == 0.0


@pytest.mark.slow
def test_policies_rank_as_they_should(tmp_path: Path) -> None:
    totals = {}
    for policy in ("none", "mpc", "oracle"):
        s = cast(dict[str, Any], simulate(SimulateOptions("small", 12, out=tmp_path / policy, policy=policy)))
        totals[policy] = s["bill"]["total"]
        if policy != "none":
            assert s["demand"]["share_within_contract"] == 1.0
    assert totals["oracle"] <= totals["mpc"] + 1e-6 < totals["none"]
    g = pq.read_table(tmp_path / "mpc" / "site.parquet").column("grid_power_w").to_numpy()
    assert np.isfinite(g).all()


def test_unknown_policy_fails_before_simulating(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(SimulateOptions("small", 0.1, out=tmp_path / "x", policy="yolo"))
    assert not (tmp_path / "x").exists()


def test_oracle_is_a_bound_it_meets_and_mpc_does_not_beat(tmp_path: Path) -> None:
    bills: dict[str, float] = {}
    b: dict[str, Any] = {}
    damped: dict[str, Any] = {}
    for policy in ("none", "mpc", "oracle"):
        s = cast(dict[str, Any], simulate(SimulateOptions("small", 3, out=tmp_path / policy, policy=policy)))
        bills[policy] = s["bill"]["total"]
        if policy == "oracle":
            b = s["oracle_bound"]
            damped = s["oracle_bound_damped"]
    # Damping like mpc costs the perfect-foresight plan wear on top, if any (the small site's swings are slow).
    assert damped["damping_throughput_kwh"] >= 0
    assert damped["degradation"] >= b["degradation"] - 1e-6 and damped["total"] >= b["total"] - 1e-6
    assert damped["total"] == pytest.approx(
        damped["energy"] + damped["demand"] + damped["degradation"] + damped["storage_adjustment"]
    )
    assert b["total"] == pytest.approx(b["lp_objective"], rel=1e-6)  # the LP's objective is the bill's terms
    assert b["total"] == pytest.approx(b["energy"] + b["demand"] + b["degradation"] + b["storage_adjustment"])
    # Executed open loop on the load it planned for, the plan's bill is met to within 0.1 %.
    assert bills["oracle"] == pytest.approx(b["total"], rel=1e-3)
    assert b["total"] <= bills["none"] and b["total"] <= bills["mpc"] * (1 + 1e-3)
    html = (tmp_path / "oracle" / "report.html").read_text()
    assert "<h2>oracle bound</h2>" in html and "<h2>oracle bound damped</h2>" in html


def test_status_reports_safe_mode_planner_failure_and_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    from powerplane.control.planner import PlanError
    from powerplane.runtime import energy
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    twin = Twin(site, path, seed=0)
    policy = energy.make_policy("mpc", twin, [])
    st = policy.status()
    assert set(st) >= {"safe_mode", "planner_failed", "demand_15min_w", "contract_w"}
    assert st["safe_mode"] == 0.0 and st["planner_failed"] == 0.0 and np.isnan(st["demand_15min_w"])
    assert st["contract_w"] == site.electrical.contract_demand_kw * 1e3
    step = policy.controller()
    policy.before_block(twin.now_s)
    assert isinstance(policy, MpcPolicy) and policy.plan is None  # no plan before the first reading of the load
    block = twin.advance(60, step)  # type: ignore[arg-type]
    policy.after_block(block)
    assert policy.status()["demand_15min_w"] == pytest.approx(float(block.plant.grid_power_w.mean()))
    policy.before_block(twin.now_s)  # the first plan, on the first block's reading
    assert policy.plan is not None
    # An invalid reading (NaN grid power) puts the fast loop in safe mode: hold, then idle.
    u = twin.plant.bess_soc.size
    step(twin.now_s, float("nan"), np.zeros(u), twin.plant.bess_soc, 50.0, False, None)  # type: ignore[operator]
    assert policy.status()["safe_mode"] == 1.0
    step(twin.now_s + 1, 1e5, np.zeros(u), twin.plant.bess_soc, 50.0, False, None)  # type: ignore[operator]
    assert policy.status()["safe_mode"] == 0.0

    def fail(*a: object, **k: object) -> None:
        raise PlanError("planner LP not solved: Infeasible")

    monkeypatch.setattr(energy_mpc, "solve_plan", fail)
    policy.before_block(twin.now_s + 3600.0)  # past the replan interval: solves, fails, keeps the last plan
    assert policy.status()["planner_failed"] == 1.0
    assert isinstance(policy, energy.ManagedPolicy) and policy.plan is not None  # the last valid plan is kept
    last = policy.stats.audit[-1]
    assert last["actor"] == "planner" and "keeping the last plan" in str(last["why"])


def test_month_peak_is_the_highest_completed_15min_window_not_a_block_mean() -> None:
    from types import SimpleNamespace

    from powerplane.runtime import energy
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    policy = energy.make_policy("none", Twin(site, path, seed=0), [])
    t0 = 900.0 * np.ceil(Twin(site, path, seed=0).now_s / 900.0)

    def block(start: float, n: int, grid_w: float) -> SimpleNamespace:
        t = start + np.arange(n, dtype=np.float64)
        return SimpleNamespace(t_s=t, plant=SimpleNamespace(grid_power_w=np.full(n, grid_w)))

    policy.after_block(block(t0, 60, 10e6))  # a 1-minute spike of 10 MW ...
    for k in range(1, 15):
        policy.after_block(block(t0 + 60 * k, 60, 1e6))  # ... in a window otherwise at 1 MW
    assert policy.month_peak_w == 0.0  # the window is not complete yet
    policy.after_block(block(t0 + 900, 60, 1e6))
    assert policy.month_peak_w == pytest.approx((60 * 10e6 + 840 * 1e6) / 900)  # 1.6 MW, what the bill sees


def _run_recording_solves(monkeypatch: pytest.MonkeyPatch, policy: Any, twin: Any, minutes: int) -> tuple[list, Any]:  # type: ignore[type-arg]
    """Every planner input the policy solves goes to ``seen``; then ``minutes`` 1-min blocks in closed loop."""
    seen: list[object] = []
    real_solve = energy_mpc.solve_plan

    def solve(inputs: object) -> object:
        seen.append(inputs)
        return real_solve(inputs)  # type: ignore[arg-type]

    monkeypatch.setattr(energy_mpc, "solve_plan", solve)
    step = policy.controller()
    for _ in range(minutes):
        policy.before_block(twin.now_s)
        policy.after_block(twin.advance(60, step))
    return seen, step


def test_mpc_follows_the_plans_battery_schedule_and_holds_its_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    from powerplane.runtime import energy
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    twin = Twin(site, path, seed=0)
    policy = energy.make_policy("mpc", twin, [])
    assert isinstance(policy, MpcPolicy)
    seen, step = _run_recording_solves(monkeypatch, policy, twin, 20)
    policy._next_plan_s = -np.inf
    policy.before_block(twin.now_s)  # a plan on 20 minutes of history: P50 and P90 of the IT load
    inputs = seen[-1]
    it = np.asarray(policy._it_recent)
    # P50 of the block means; P90 of the 15-min means (the demand window, in 1-minute blocks).
    p50 = np.quantile(it, 0.5)
    p90 = np.quantile([it[k : k + 15].mean() for k in range(it.size - 14)], energy.IT_FORECAST_QUANTILE)
    assert p90 > p50
    assert inputs.peak_headroom_w is not None and np.all(inputs.peak_headroom_w >= 0)  # type: ignore[attr-defined]
    # The headroom is the band's facility watts: (P90 - P50) x the facility watts per IT watt of the slot.
    per_it = (inputs.load_w - float(twin.plant.bess.aux_power_w.sum())) / p50  # type: ignore[attr-defined]
    np.testing.assert_allclose(inputs.peak_headroom_w, (p90 - p50) * per_it, rtol=1e-6)  # type: ignore[attr-defined]
    plan = policy.plan
    assert plan is not None
    u = twin.plant.bess_soc.size
    t = float(plan.t_s[0]) + 1.0
    step(t, 1e5, np.zeros(u), twin.plant.bess_soc, 50.0, False, None)  # type: ignore[operator]
    assert policy.loop.plan_bess_w == pytest.approx(float(plan.bess_w[0].sum()))
    assert policy.loop.plan_grid_w is None
    assert policy.loop.peak_target_w == pytest.approx(max(plan.peak_w, policy.month_peak_w))
    # Deferrable jobs wait for the slots where more load costs the plan least (its marginal cost, not the price).
    windows = twin.workload.sched.plan.windows
    assert plan.marginal_per_kwh is not None and np.all(np.isfinite(plan.marginal_per_kwh))
    np.testing.assert_allclose(windows[:, 0], plan.t_s)
    np.testing.assert_allclose(windows[:, 2], plan.marginal_per_kwh)


def test_mpc_prices_a_new_peak_by_the_share_of_the_billing_period_left() -> None:
    from powerplane.runtime.energy_mpc import month_end_s
    from powerplane.twin.twin import Twin

    site, path = load_scenario("texas")
    twin = Twin(site, path, seed=0)
    policy = MpcPolicy(twin, [])
    policy.demand_rate_scale = 7 / 30.4
    now = twin.now_s
    policy.billing_end_s = now + 7 * 86400.0
    # A 24 h horizon at the start of a 7-day period: a peak set now binds 7 days, each paying to hold it.
    assert policy.demand_rate_share(now) == pytest.approx(7 / 30.4 / 7)
    assert policy.demand_rate_share(now + 6.5 * 86400.0) == pytest.approx(7 / 30.4)  # the last horizon: all of it
    # Live: the calendar month in the site's zone (texas starts 2026-07-14 local: 18 days to 1 August).
    policy.billing_end_s = None
    policy.demand_rate_scale = 1.0
    end = month_end_s(now, site.timezone)
    assert (end - now) / 86400.0 == pytest.approx(18.0)
    assert policy.demand_rate_share(now) == pytest.approx(1 / 18)


def test_mpc_values_the_energy_left_at_the_horizons_end_at_the_weeks_mean_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from powerplane.physics import aging, tariff
    from powerplane.runtime.energy_inputs import BESS_CELL_TEMP_C
    from powerplane.twin.twin import Twin

    site, path = load_scenario("texas")
    twin = Twin(site, path, seed=0)
    policy = MpcPolicy(twin, [])
    now = twin.now_s
    t = now + 900.0 * (np.arange(7 * 96) + 0.5)
    mean_price = float(np.mean(tariff.price_per_kwh(t, site.tariff, site.timezone)))
    wear = aging.throughput_cost_per_kwh(site.energy.battery_capex_per_kwh, BESS_CELL_TEMP_C)
    value = policy.terminal_value(now)
    assert value == pytest.approx(mean_price * 0.95 - wear)  # texas: 0.95 discharge efficiency
    # Worth more than the night's energy (so the plan may carry some over) and less than the dear hours' (so it
    # does not hoard what it could sell).
    assert 0.028 / 0.95 < value < 0.12
    policy.terminal = "floor"
    assert policy.terminal_value(now) is None
    policy.terminal_value_per_kwh = 0.01
    assert policy.terminal_value(now) == 0.01  # an explicit value wins
    # The plan gets it: the energy left is priced, no terminal floor.
    policy.terminal, policy.terminal_value_per_kwh = "value", None
    seen, _ = _run_recording_solves(monkeypatch, policy, twin, 2)
    assert seen and seen[-1].terminal_value_per_kwh == pytest.approx(policy.terminal_value(twin.now_s))  # type: ignore[attr-defined]
    assert policy.plan_basis["terminal_value_per_kwh"] == pytest.approx(seen[-1].terminal_value_per_kwh)  # type: ignore[attr-defined]


def test_mpc_peak_scenarios_come_from_the_forecast_band_or_the_last_day() -> None:
    from powerplane.runtime.energy_mpc import SCENARIO_LEVELS, SCENARIO_MIN_WINDOWS
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    policy = MpcPolicy(Twin(site, path, seed=0), [])
    it = np.full(6, 10e6)
    # Too little history: the P90 headroom is kept instead.
    none, every = np.zeros(6, dtype=bool), np.ones(6, dtype=bool)
    scen, source = policy._scenarios(it, it * 1.1, none)
    assert scen is None and "headroom" in source
    windows = np.array([9.0, 10.0, 10.0, 11.0, 10.0, 12.0, 10.0, 10.5, 9.5, 10.0]) * 1e6
    policy._it_windows.extend(windows.tolist())
    assert len(policy._it_windows) >= SCENARIO_MIN_WINDOWS
    scen, source = policy._scenarios(it, it * 1.1, none)
    assert scen is not None and scen.shape == (6, SCENARIO_LEVELS.size) and "demand windows" in source
    np.testing.assert_allclose(scen[0], np.quantile(windows - np.median(windows), SCENARIO_LEVELS))
    # From the forecaster: P90 - P50 read as 1.28 sigma of a normal spread; the middle scenario is the median.
    band = np.linspace(1e6, 2e6, 6)
    scen, source = policy._scenarios(it, it + band, every)
    assert scen is not None and source.startswith("forecast band for 6 slots")
    np.testing.assert_allclose(scen[:, SCENARIO_LEVELS.size // 2], 0.0, atol=1e-6)
    np.testing.assert_allclose(scen[:, -1] / band, scen[0, -1] / band[0])  # scales with the band
    # The forecast reaches the first 2 slots: its band there, the last day's windows after.
    part = np.arange(6) < 2
    scen2, source = policy._scenarios(it, it + band, part)
    assert scen2 is not None and source.startswith("forecast band for 2 slots, then last")
    np.testing.assert_allclose(scen2[:2], scen[:2])
    np.testing.assert_allclose(
        scen2[2:], np.repeat(np.quantile(windows - np.median(windows), SCENARIO_LEVELS)[None], 4, 0)
    )


def test_mpc_measures_the_fast_loops_work_around_the_plan_and_prices_its_wear() -> None:
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    twin = Twin(site, path, seed=0)
    policy = MpcPolicy(twin, [])
    step = policy.controller()
    for _ in range(8):
        policy.before_block(twin.now_s)
        policy.after_block(twin.advance(60, step))  # type: ignore[arg-type]
    r = policy.residual_w[np.isfinite(policy.residual_w)]
    assert r.size >= 7 * 60  # one per cycle once a plan is followed
    q = policy._damping_quantiles()
    assert q is not None and q.size == 8 and np.all(np.diff(q) >= 0)
    policy._next_plan_s = -np.inf
    policy.before_block(twin.now_s)
    assert policy.plan_basis["damping_mean_abs_w"] == pytest.approx(float(np.mean(np.abs(q))))
    assert 0 < float(policy.plan_basis["demand_rate_share"]) <= 1.0


@pytest.mark.parametrize("defer", [True, False])
def test_mpc_hands_the_scheduler_its_windows_only_when_deferring(defer: bool) -> None:
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    twin = Twin(site, path, seed=0)
    policy = MpcPolicy(twin, [])
    policy.defer = defer
    controller = policy.controller()
    for _ in range(3):
        policy.before_block(twin.now_s)
        policy.after_block(twin.advance(60, controller))  # type: ignore[arg-type]
    assert policy.stats.plan_solves >= 1
    assert (twin.workload.sched.plan.windows.size > 0) is defer
