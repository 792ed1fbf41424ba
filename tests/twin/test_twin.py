import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.config.schema import CoolingFailureConfig, OutageConfig
from powerplane.core.commands import (
    BessSetpoint,
    CoolingSetpoint,
    GpuPowerCap,
    JobPowerCap,
    PauseJob,
    ResumeJob,
)
from powerplane.twin.jobs import State
from powerplane.twin.twin import Twin


def _twin(dt: float = 1.0, seed: int = 0, name: str = "small") -> Twin:
    site, path = load_scenario(name)
    return Twin(site, path, seed=seed, dt_s=dt)


def test_training_gpus_resemble_the_measured_h100_trace() -> None:
    """FACTS.md: real 8xH100 training at 100 ms: ~70 W idle, compute ~550-600 W, the GPUs of a node move
    together (corr ~0.99)."""
    tw = _twin(dt=0.1)
    wl = tw.workload
    j = int(np.flatnonzero(wl.jobs.view("kind") == 0)[0])
    h100 = np.flatnonzero(tw.topo.gpu_model_idx == tw.topo.gpu_models.index("H100"))
    gpus = np.intersect1d(wl.jobs.gpus[j], h100)[:16]
    assert gpus.size >= 8
    wl.quiet(j, tw.now_s)  # look at steady iterations
    p = np.concatenate([tw.advance(50).fleet.gpu_power_w[:, gpus] for _ in range(12)])
    assert 520 < np.percentile(p, 95) < 620
    assert np.percentile(p, 5) < 250
    corr = np.corrcoef(p.T)
    assert corr[np.triu_indices_from(corr, 1)].min() > 0.95
    idle = np.setdiff1d(np.arange(tw.topo.n_gpus), np.flatnonzero(wl.gpu_job >= 0))
    if idle.size:
        idle_h100 = np.intersect1d(idle, h100)
        if idle_h100.size:
            assert 55 < tw.read().metric("gpu", "power_w")[idle_h100].mean() < 85


def test_energy_balance_closes() -> None:
    tw = _twin()
    tw.apply([BessSetpoint(0, 60e3)])
    tot = {"grid": 0.0, "rhs": 0.0, "fac": 0.0}
    for _ in range(20):
        p = tw.advance(60).plant
        tot["grid"] += p.grid_power_w.sum()
        tot["rhs"] += (
            p.facility_power_w
            - p.bess_power_w
            - p.renewable_power_w
            - p.generator_power_w
            - p.ups_power_w
            - p.unserved_power_w
        ).sum()
        tot["fac"] += p.facility_power_w.sum()
    assert abs(tot["grid"] - tot["rhs"]) / tot["fac"] < 1e-3


def test_actuators_clip_and_report() -> None:
    tw = _twin()
    tw.advance(5)
    res = tw.apply([BessSetpoint(0, 1e9), BessSetpoint(7, 1.0), BessSetpoint(0, float("nan"))])
    assert res[0].applied and res[0].clipped
    assert not res[1].applied and "unknown battery" in res[1].detail
    assert not res[2].applied
    # Caps are clipped to the model's allowed range; the job slows.
    j = int(np.flatnonzero(tw.workload.jobs.view("kind") == 0)[0])
    res = tw.apply([JobPowerCap(j, 50.0)])
    assert res[0].applied and res[0].clipped
    gpus = tw.workload.jobs.gpus[j]
    assert np.all(tw.fleet.cap_w[gpus] >= tw.fleet.min_cap_w[gpus])
    assert tw.workload.jobs.speed[j] < 1.0
    blk = tw.advance(30)
    assert np.all(blk.fleet.gpu_power_w[:, gpus] <= tw.fleet.cap_w[gpus] + 1e-3)
    assert tw.read().metric("gpu", "throttle_reasons")[gpus].max() & 0x4
    res = tw.apply([GpuPowerCap(gpus, float("nan"))])
    assert np.all(tw.fleet.cap_w[gpus] == tw.fleet.max_cap_w[gpus]) and tw.workload.jobs.speed[j] == 1.0
    assert not tw.apply([GpuPowerCap(np.array([10_000]), 300.0)])[0].applied
    # Cooling setpoint is bounded.
    assert tw.apply([CoolingSetpoint(99.0)])[0].clipped
    # BESS SOC stays in its window under a long discharge.
    tw.apply([BessSetpoint(0, 1e9)])
    for _ in range(150):
        blk = tw.advance(60)
    soc = blk.plant.bess_soc
    unit = tw.site.bess[0]
    assert soc.min() >= unit.soc_min - 1e-9 and blk.plant.bess_power_w[-1] == pytest.approx(0.0, abs=1.0)


def test_pause_and_resume_a_job() -> None:
    tw = _twin()
    j = int(np.flatnonzero(tw.workload.jobs.view("kind") == 0)[0])
    assert tw.apply([PauseJob(j)])[0].applied
    blk = tw.advance(20)
    gpus = tw.workload.jobs.gpus[j]
    assert tw.workload.jobs.state[j] == State.PAUSED
    assert blk.fleet.gpu_power_w[-1, gpus].mean() < 120
    assert not tw.apply([PauseJob(j)])[0].applied
    assert tw.apply([ResumeJob(j)])[0].applied
    tw.advance(int(tw.workload.jobs.startup_s[j]) + 5)
    assert tw.workload.jobs.state[j] in (State.RUNNING, State.CHECKPOINT)


def test_grid_outage_is_carried_by_batteries_ups_and_generator() -> None:
    site, path = load_scenario("small")
    outage = OutageConfig(at_h=0.01, duration_s=120)
    site = site.model_copy(update={"grid": site.grid.model_copy(update={"outages": [outage]})})
    tw = Twin(site, path, seed=0, dt_s=1.0)
    p = tw.advance(300).plant
    out = p.islanded
    assert out.sum() == 120
    assert np.all(p.grid_power_w[out] == 0.0)
    assert p.bess_power_w[out].max() > 0
    assert p.generator_power_w[out][:9].max() == 0.0 and p.generator_power_w[out][15:].min() > 0
    served = p.bess_power_w + p.renewable_power_w + p.generator_power_w + p.ups_power_w + p.unserved_power_w
    np.testing.assert_allclose(served[out], p.facility_power_w[out], rtol=1e-9)
    assert p.unserved_power_w.sum() == 0.0


def test_read_frame_has_the_telemetry_metrics() -> None:
    tw = _twin()
    tw.advance(3)
    f = tw.read()
    assert f.source == "twin" and f.t_s == pytest.approx(tw.now_s)
    g = f.levels["gpu"]
    for m in (
        "power_w",
        "energy_mj",
        "util_pct",
        "mem_util_pct",
        "sm_clock_mhz",
        "temp_c",
        "mem_temp_c",
        "power_cap_w",
        "throttle_reasons",
        "last_xid",
    ):
        assert g[m].shape == (256,)
    assert set(f.levels["node"]) >= {"power_w", "pdu_voltage_v", "pdu_current_a"}
    assert f.levels["rack"]["inlet_temp_c"].shape == (8,)
    assert 49.5 < f.levels["site"]["frequency_hz"][0] < 50.5
    e0 = g["energy_mj"].copy()
    tw.advance(10)
    assert np.all(tw.read().levels["gpu"]["energy_mj"] > e0)


def test_cooling_failure_makes_a_hot_spot() -> None:
    site, path = load_scenario("small")
    cooling = site.cooling.model_copy(
        update={"failures": [CoolingFailureConfig(hall="hall-1", unit=0, at_h=0.0, duration_h=1.0, inlet_rise_c=12)]}
    )
    tw = Twin(site.model_copy(update={"cooling": cooling}), path, seed=0)
    for _ in range(15):
        tw.advance(60)
    inlet = tw.read().levels["rack"]["inlet_temp_c"]
    failed = tw.topo.rack_cooling_unit == 0
    assert inlet[failed].mean() > inlet[~failed].mean() + 8
