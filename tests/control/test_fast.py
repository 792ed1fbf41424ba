import numpy as np
import pytest

from powerplane.config.schema import BessUnitConfig
from powerplane.control.fast import FastLoop, FastSettings, Measurements, allocate
from powerplane.control.levers import ComputeLever
from powerplane.physics import battery
from powerplane.physics.battery import BessParams


def _params(n: int = 2, **kw: float) -> BessParams:
    cfg = dict(hall="h", power_kw=1000.0, energy_kwh=2000.0, soc_initial=0.5, soc_min=0.1, soc_max=0.95)
    cfg.update(kw)
    return BessParams.from_config([BessUnitConfig(name=f"b{i}", **cfg) for i in range(n)])  # type: ignore[arg-type]


def _m(t: float, load: float, soc: float = 0.5, n: int = 2, **kw: object) -> Measurements:
    return Measurements(t_s=t, grid_w=load, bess_w=np.zeros(n), soc=np.full(n, soc), frequency_hz=50.0, **kw)  # type: ignore[arg-type]


def test_contract_cap_discharges_and_asks_for_compute_beyond_the_batteries() -> None:
    loop = FastLoop(
        _params(), FastSettings(contract_w=10e6, contract_margin=1.0, contract_instant_factor=1.0, damping=False)
    )
    d = loop.step(_m(0.0, 11e6), 1.0)
    assert d.bess_total_w == pytest.approx(1e6) and d.shed_w == 0.0
    loop = FastLoop(
        _params(), FastSettings(contract_w=10e6, contract_margin=1.0, contract_instant_factor=1.0, damping=False)
    )
    d = loop.step(_m(0.0, 13e6), 1.0)
    assert d.bess_total_w == pytest.approx(2e6) and d.shed_w == pytest.approx(1e6)
    assert any("shed compute" in r for r in d.reasons)


def test_fifteen_minute_average_is_kept() -> None:
    s = FastSettings(contract_w=10e6, contract_margin=1.0, contract_instant_factor=1.0, damping=False)
    loop = FastLoop(_params(2, power_kw=5000, energy_kwh=50000), s)
    # The first half of the window ran above contract without batteries: the rest must run below it.
    loop._window_id, loop._window_energy_j = 0, 11e6 * 450.0
    loop._last_t = 450.0
    d = loop.step(_m(450.0, 10e6), 1.0)
    assert d.bess_total_w > 0.9e6  # 10 MW load, room for only ~9 MW on average


def test_damping_limits_the_grid_ramp_and_the_batteries_take_the_swing() -> None:
    s = FastSettings(contract_w=1e9, damping=True, damping_tau_s=10.0, ramp_limit_w_per_s=0.5e6)
    p = _params(2, power_kw=5000, energy_kwh=10000)
    loop = FastLoop(p, s)
    grid = []
    bess, soc = np.zeros(2), np.full(2, 0.5)
    for k in range(2000):
        load = 10e6 + (6e6 if (k // 10) % 2 else 0.0)  # a 6 MW square wave with a 2 s period at 0.1 s steps
        m = Measurements(k * 0.1, load - bess.sum(), bess, soc, 50.0)
        d = loop.step(m, 0.1)
        bess, soc = battery.step(d.bess_unit_w, bess, soc, p, 0.1)  # the units' 50 ms response lag
        grid.append(load - bess.sum())
    g = np.array(grid)
    assert np.abs(np.diff(g)).max() / 0.1 <= 0.5e6 * 1.001
    tail = g[-200:]  # settled: the grid carries the 13 MW mean, the batteries the 6 MW swing at 0.5 Hz
    assert tail.mean() == pytest.approx(13e6, rel=0.02)
    assert tail.max() - tail.min() < 0.6e6


def test_frequency_droop_with_deadband() -> None:
    s = FastSettings(contract_w=1e9, damping=False, nominal_hz=50.0, deadband_hz=0.02, droop=0.05, frequency_share=0.5)
    loop = FastLoop(_params(2), s)
    m = _m(0.0, 5e6)
    m.frequency_hz = 50.01
    assert loop.step(m, 1.0).bess_total_w == pytest.approx(0.0, abs=1e-6)
    m = _m(1.0, 5e6)
    m.frequency_hz = 49.52  # 0.46 Hz beyond the 0.02 Hz deadband -> 0.46/(50*0.05) = 18.4 % of the response power
    d = loop.step(m, 1.0)
    assert d.bess_total_w == pytest.approx(0.184 * 0.5 * 2e6, rel=1e-6)


def test_stale_readings_hold_then_go_idle() -> None:
    s = FastSettings(contract_w=1e9, damping=False, stale_after_s=5.0, safe_hold_s=10.0)
    loop = FastLoop(_params(2), s)
    loop.last_unit_w = np.array([4e5, 4e5])
    d = loop.step(_m(100.0, 5e6, reading_t_s=90.0), 1.0)
    assert d.mode == "safe" and d.bess_total_w == pytest.approx(8e5)
    d = loop.step(_m(111.0, 5e6, reading_t_s=90.0), 1.0)
    assert d.mode == "safe" and d.bess_total_w == pytest.approx(0.0)
    d = loop.step(_m(112.0, 5e6, valid=False), 1.0)
    assert d.mode == "safe"


def test_limits_guard_reserve_ramp_and_availability() -> None:
    p = _params(2, ramp_kw_per_s=100.0)
    s = FastSettings(contract_w=1e9, damping=False, backup_reserve=np.array([0.5, 0.5]))
    loop = FastLoop(p, s)
    lo, hi = loop.unit_bounds(_m(0.0, 0.0, soc=0.5), 1.0)
    assert np.all(hi == 0.0)  # at the reserve: no discharge while the grid is up
    assert np.all(lo == pytest.approx(-1e5))  # ramp: 100 kW/s from idle
    m = _m(0.0, 0.0, soc=0.5, islanded=True)
    lo, hi = loop.unit_bounds(m, 1.0)
    assert np.all(hi == pytest.approx(1e5))  # in island the reserve is there to be used
    loop.available[1] = False
    lo, hi = loop.unit_bounds(m, 1.0)
    assert hi[1] == 0.0 and lo[1] == 0.0


@pytest.mark.parametrize("total", [-1.5e6, -0.3e6, 0.0, 0.7e6, 1.9e6, 5e6])
def test_allocation_respects_unit_limits_and_sums(total: float) -> None:
    p = _params(3)
    soc = np.array([0.15, 0.5, 0.9])
    lo, hi = -p.power_max_w, p.power_max_w
    out = allocate(total, lo, hi, soc, p)
    assert np.all(out >= lo - 1e-6) and np.all(out <= hi + 1e-6)
    assert out.sum() == pytest.approx(np.clip(total, lo.sum(), hi.sum()))
    if total > 0:
        assert out[0] <= out[1] <= out[2] + 1e-6  # fuller units discharge more
    if total < 0:
        assert out[0] <= out[1] + 1e-6  # emptier units charge more


def test_allocation_busbar_moves_load_to_other_halls() -> None:
    p = _params(2)
    out = allocate(
        0.0,
        -p.power_max_w,
        p.power_max_w,
        np.array([0.5, 0.5]),
        p,
        hall_it_w=np.array([5.3e6, 1e6]),
        busbar_w=np.array([5e6, 5e6]),
        unit_hall=np.array([0, 1]),
    )
    assert out[0] == pytest.approx(0.3e6)  # hall 0 over its busbar: its battery discharges
    assert out.sum() == pytest.approx(0.0, abs=1.0)  # hall 1's battery charges to keep the site total


def test_compute_lever_caps_low_class_first_and_releases_slowly() -> None:
    n = 6
    lever = ComputeLever(np.full(n, 200.0), np.full(n, 700.0), ["low", "normal"], hold_s=10.0, release_w_per_s=50.0)
    power = np.full(n, 600.0)
    cls = np.array([0, 0, 1, 1, 2, 2])  # core, core, normal, normal, low, low
    plan = lever.update(0.0, 1.0, 500.0, power, cls)
    assert plan.by_class_w == {"low": 500.0}
    assert np.isnan(lever.caps_w[:4]).all() and lever.caps_w[4:] == pytest.approx([350.0, 350.0])
    plan = lever.update(1.0, 1.0, 1200.0, power, cls)
    assert plan.by_class_w["low"] == pytest.approx(800.0) and plan.by_class_w["normal"] == pytest.approx(400.0)
    assert np.isnan(lever.caps_w[:2]).all()  # core is never capped unless configured
    lever.update(5.0, 1.0, 0.0, power, cls)
    assert lever.caps_w[4] == pytest.approx(200.0)  # held
    lever.update(20.0, 1.0, 0.0, power, cls)
    assert lever.caps_w[4] == pytest.approx(250.0)  # then released gradually


def _run_swing(lowpass: bool, n: int = 3000) -> tuple[np.ndarray, float]:
    """A 3 MW swing with a 10 s period (0.1 s steps) on a slow 2 MW ramp over 100 s, through the units' lag."""
    s = FastSettings(contract_w=1e9, damping=True, damping_tau_s=15.0, ramp_limit_w_per_s=1e6, damping_lowpass=lowpass)
    p = _params(2, power_kw=5000, energy_kwh=10000)
    loop = FastLoop(p, s)
    bess, soc = np.zeros(2), np.full(2, 0.5)
    grid, throughput = [], 0.0
    for k in range(n):
        t = k * 0.1
        load = 10e6 + 2e6 * min(t / 100.0, 1.0) + (3e6 if (k // 50) % 2 else 0.0)
        d = loop.step(Measurements(t, load - bess.sum(), bess, soc, 50.0), 0.1)
        assert np.all(np.abs(d.bess_unit_w) <= p.power_max_w)  # commands within nameplate
        bess, soc = battery.step(d.bess_unit_w, bess, soc, p, 0.1)
        grid.append(load - bess.sum())
        throughput += float(np.abs(bess).sum()) * 0.1
    return np.array(grid), throughput


def test_ramp_limiter_holds_the_ramp_with_less_throughput_than_cancellation() -> None:
    g_lim, thr_lim = _run_swing(lowpass=False)
    g_lp, thr_lp = _run_swing(lowpass=True)
    for g in (g_lim, g_lp):
        ramps = np.abs(g[10:] - g[:-10])  # over 1 s, as the grid spec counts
        assert ramps.max() <= 1e6 * 1.001
    # Cancellation sends every swing and the slow ramp's lag to the batteries; the limiter lets the grid follow
    # the ramp (0.02 MW/s, within the limit) and each 3 MW step at 0.9 MW/s: the batteries carry a triangle of
    # 3 MW x 3.3 s / 2 per 5 s half period (1 MW on average) instead of the whole 1.5 MW swing: about 2/3.
    assert thr_lim == pytest.approx(2 / 3 * thr_lp, rel=0.05)
    # It centres on the load: the mean battery power over whole periods stays near zero (no drift of the SOC).
    assert abs((10e6 + 2e6 + 1.5e6) - g_lim[-1000:].mean()) < 0.1e6


def test_a_jump_beyond_the_batteries_ramp_counts_against_the_limiters_second() -> None:
    """Square 3 MW edges every 2 s at 0.1 s steps on units that ramp 20 MW/s together: each edge leaves 1 MW on
    the grid for a cycle. The limiter's next steps must not add their full 0.9 MW/s on top within the same second
    (1-s ramps of ~1.6 MW without the window): every 1-s window stays within the 1 MW/s limit."""
    s = FastSettings(contract_w=1e9, damping=True, damping_tau_s=15.0, ramp_limit_w_per_s=1e6)
    p = _params(2, power_kw=5000, energy_kwh=10000, ramp_kw_per_s=10_000.0)
    loop = FastLoop(p, s)
    bess, soc = np.zeros(2), np.full(2, 0.5)
    grid = []
    for k in range(1200):
        t = k * 0.1
        load = 12e6 + (3e6 if (k // 20) % 2 else 0.0)
        d = loop.step(Measurements(t, load - bess.sum(), bess, soc, 50.0), 0.1)
        bess, soc = battery.step(d.bess_unit_w, bess, soc, p, 0.1)
        grid.append(load - bess.sum())
    g = np.array(grid)
    assert np.abs(np.diff(g)).max() > 0.5e6  # the batteries' ramp did leave jumps on the grid
    assert np.abs(g[10:] - g[:-10]).max() <= 1e6 * 1.001


def test_lead_brings_lagging_units_to_the_target_within_a_cycle() -> None:
    p = _params(2, power_kw=5000, energy_kwh=10000, response_time_s=0.05)
    loop = FastLoop(p, FastSettings(contract_w=1e9, damping=False))
    loop.plan_bess_w = 2e6
    bess = np.zeros(2)
    d = loop.step(Measurements(0.0, 10e6, bess, np.full(2, 0.5), 50.0), 0.1)
    assert d.bess_total_w == pytest.approx(2e6)
    alpha = 1.0 - np.exp(-0.1 / 0.05)
    np.testing.assert_allclose(d.bess_unit_w, 1e6 / alpha)  # the setpoint leads the 50 ms lag
    actual, _ = battery.step(d.bess_unit_w, bess, np.full(2, 0.5), p, 0.1)
    np.testing.assert_allclose(actual, [1e6, 1e6])
    # At 1 s steps the lag has died out: the setpoint is the target itself.
    loop = FastLoop(p, FastSettings(contract_w=1e9, damping=False))
    loop.plan_bess_w = 2e6
    np.testing.assert_allclose(loop.step(Measurements(0.0, 10e6, bess, np.full(2, 0.5), 50.0), 1.0).bess_unit_w, 1e6)


def test_peak_target_is_held_by_the_batteries_and_never_sheds() -> None:
    s = FastSettings(contract_w=20e6, contract_margin=1.0, contract_instant_factor=1.0, damping=False)
    loop = FastLoop(_params(2, power_kw=1000, energy_kwh=50000), s)
    loop.peak_target_w = 9e6
    loop.plan_bess_w = 0.0
    # Half the window ran at 10 MW: the rest must average 8 MW for a 9 MW window: 2 MW from the batteries.
    loop._window_id, loop._window_energy_j, loop._last_t = 0, 10e6 * 450.0, 450.0
    d = loop.step(_m(450.0, 10e6), 1.0)
    assert d.bess_total_w == pytest.approx(10e6 - (9e6 * 900 - 10e6 * 450) / 450)
    assert d.shed_w == 0.0 and "peak target" in d.reasons
    # Beyond the batteries (4 MW needed, 2 MW there): they give all they have, compute is not shed for a target.
    loop = FastLoop(_params(2, power_kw=1000, energy_kwh=50000), s)
    loop.peak_target_w = 9e6
    loop._window_id, loop._window_energy_j, loop._last_t = 0, 11e6 * 450.0, 450.0
    d = loop.step(_m(450.0, 11e6), 1.0)
    assert d.bess_total_w == pytest.approx(2e6) and d.shed_w == 0.0


def test_no_discharge_past_the_load_when_export_is_not_allowed() -> None:
    loop = FastLoop(_params(2), FastSettings(contract_w=1e9, damping=False, export_limit_w=0.0))
    loop.plan_bess_w = 2e6  # the plan counted on 2 MW of load; 0.5 MW is there (net of solar)
    d = loop.step(_m(0.0, 0.5e6), 1.0)
    assert d.bess_total_w == pytest.approx(0.5e6) and "export limit" in d.reasons
    loop = FastLoop(_params(2), FastSettings(contract_w=1e9, damping=False, export_limit_w=0.2e6))
    loop.plan_bess_w = 2e6
    assert loop.step(_m(0.0, 0.5e6), 1.0).bess_total_w == pytest.approx(0.7e6)


def test_ramp_limited_series_matches_the_fast_loops_damping() -> None:
    from powerplane.control.fast import ramp_limited

    # A 3 MW square swing every 5 s on 10 MW, at 1 s: the limiter's grid ramps at most 0.9 MW/s, and the fast loop
    # itself, idle otherwise (plan-free, batteries ideal), hands the batteries exactly the same share.
    t = np.arange(600.0)
    load = 10e6 + 3e6 * ((t // 5) % 2)
    s = FastSettings(contract_w=50e6, ramp_limit_w_per_s=1e6, nominal_hz=50.0)
    g = ramp_limited(load, _params(n=4), s, 1.0)
    assert np.abs(np.diff(g)).max() <= 0.9e6 + 1.0
    assert np.abs(load - g).sum() > 0
    loop = FastLoop(_params(n=4), s)
    taken = []
    for k in range(t.size):
        d = loop.step(
            Measurements(
                t[k],
                load[k] - (taken[-1] if taken else 0.0),
                np.full(4, (taken[-1] if taken else 0.0) / 4),
                np.full(4, 0.5),
                50.0,
            ),
            1.0,
        )
        taken.append(d.bess_total_w)
    np.testing.assert_allclose(load - np.array(taken), g, atol=1.0)


def test_a_swing_within_the_windows_average_sheds_nothing_at_the_soc_floor() -> None:
    # Batteries at their SOC floor (nothing to discharge), a training swing of 15.7 <-> 18.4
    # MW each second around 17 MW, contract 18 MW at 98 %: the window's average stays within the contract, so no
    # compute is shed for the swing's tops; a load that stays at 18.5 MW is shed (the average would be over).
    # (Damping off: the contract rows alone. With it the batteries would also charge in the troughs.)
    s = FastSettings(contract_w=18e6, contract_margin=0.98, damping=False, nominal_hz=50.0)
    loop = FastLoop(_params(n=4, power_kw=2500, energy_kwh=5000), s)
    shed = 0.0
    last = np.zeros(4)
    for k in range(1800):  # the second window counts (the loop has run through one, its filter settled)
        load = 15.7e6 if k % 2 else 18.4e6
        m = Measurements(900.0 + k, load - float(last.sum()), last, np.full(4, 0.1), 50.0)
        d = loop.step(m, 1.0)
        last = d.bess_unit_w
        shed += d.shed_w if k >= 900 else 0.0
    assert shed == 0.0
    loop = FastLoop(_params(n=4, power_kw=2500, energy_kwh=5000), s)
    shed_sustained = 0.0
    for k in range(900):
        d = loop.step(_m(900.0 + k, 18.5e6, soc=0.1, n=4), 1.0)
        shed_sustained += d.shed_w
    assert shed_sustained > 0.0
