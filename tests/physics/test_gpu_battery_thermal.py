import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerplane.config.schema import BessUnitConfig
from powerplane.physics import battery, gpu_power, grid, thermal


def test_board_power_and_caps() -> None:
    p = gpu_power.profile("H100")
    assert gpu_power.board_power_w(0.0, p.idle_w, p.peak_w, p.tdp_w) == pytest.approx(70.0)
    assert gpu_power.board_power_w(1.0, p.idle_w, p.peak_w, p.tdp_w) == pytest.approx(590.0)
    assert gpu_power.board_power_w(1.0, p.idle_w, p.peak_w, 400.0) == pytest.approx(400.0)
    assert gpu_power.throughput_factor(700.0, p.idle_w, p.peak_w) == pytest.approx(1.0)
    assert 0.75 < float(gpu_power.throughput_factor(420.0, p.idle_w, p.peak_w)) < 0.9
    with pytest.raises(ValueError, match="known"):
        gpu_power.profile("Z999")


def test_node_power_matches_published_maxima() -> None:
    # DGX H100 measured maxima near 8.4 kW; DGX B200 about 14 kW at full load (FACTS.md).
    h = gpu_power.profile("H100")
    assert 7_800 < float(gpu_power.node_power_w(8 * h.peak_w, h.node_base_w, h.node_gpu_share)) < 9_000
    b = gpu_power.profile("B200")
    assert 12_500 < float(gpu_power.node_power_w(8 * b.tdp_w, b.node_base_w, b.node_gpu_share)) < 14_500


def test_lag_block_matches_stepwise() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(100, 600, size=(50, 7))
    a = thermal.lag_coefficient(1.0, 20.0)
    y = np.full(7, 30.0)
    y_step = y.copy()
    for k in range(50):
        y_step = a * y_step + (1 - a) * x[k]
    np.testing.assert_allclose(thermal.lag_block_end(y, x, a), y_step, rtol=1e-10)


def _unit(**kw: float) -> battery.BessParams:
    cfg = dict(name="b", hall="h", power_kw=100.0, energy_kwh=200.0, soc_initial=0.5, response_time_s=0.0)
    cfg.update(kw)
    return battery.BessParams.from_config([BessUnitConfig(**cfg)])  # type: ignore[arg-type]


def test_battery_clips_to_nameplate_and_soc_window() -> None:
    p = _unit()
    power, soc = battery.step(np.array([1e9]), np.zeros(1), np.array([0.5]), p, 1.0)
    assert power[0] == pytest.approx(100e3)
    # Near the floor, discharge is limited by the energy left above soc_min.
    power, soc = battery.step(np.array([100e3]), np.zeros(1), np.array([0.1001]), p, 3600.0)
    assert soc[0] == pytest.approx(0.1)
    assert power[0] == pytest.approx(0.0001 * 200e3 * 0.95, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3e5, 3e5), min_size=1, max_size=60), st.floats(0.1, 0.9))
def test_battery_energy_is_conserved_and_soc_bounded(setpoints: list[float], soc0: float) -> None:
    p = _unit(charge_efficiency=0.9, discharge_efficiency=0.92, ramp_kw_per_s=50.0)
    soc = np.array([soc0])
    power = np.zeros(1)
    stored = soc0 * 200 * 3.6e6
    for sp in setpoints:
        prev = power.copy()
        power, soc = battery.step(np.array([sp]), power, soc, p, 1.0)
        assert p.soc_min[0] - 1e-12 <= soc[0] <= p.soc_max[0] + 1e-12
        assert abs(power[0]) <= 100e3 + 1e-6
        # the ramp limit holds, except where the SOC window cuts the power (an empty battery cannot ramp down its
        # discharge gently: hypothesis found 50,001 W -> 0.54 W at the floor)
        at_edge = soc[0] <= p.soc_min[0] + 1e-9 or soc[0] >= p.soc_max[0] - 1e-9
        assert at_edge or abs(power[0] - prev[0]) <= 50e3 + 1e-6
        stored += -power[0] / 0.92 if power[0] > 0 else -power[0] * 0.9
    assert soc[0] * 200 * 3.6e6 == pytest.approx(stored, rel=1e-9, abs=1e-3)


def test_frequency_wander_has_the_configured_spread() -> None:
    rng = np.random.default_rng(0)
    x = grid.ou_block(0.0, 200_000, 1.0, 0.02, 60.0, rng)
    assert np.std(x) == pytest.approx(0.02, rel=0.15)
    t = np.arange(0.0, 200.0, 0.1)
    dev = grid.event_profile(t, np.array([10.0]), 0.3, 30.0)
    assert dev[t < 10].max() == 0.0 and dev.min() == pytest.approx(-0.3, rel=1e-3)
    assert dev[-1] > -0.3 * np.exp(-150 / 30.0) - 1e-3
