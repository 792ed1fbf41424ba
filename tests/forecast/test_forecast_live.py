"""LiveForecaster on the real twin and tracker; MonitoredForecaster's alert, retrain and promotion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from powerplane.config.loader import load_scenario
from powerplane.forecast.jobaware import JobAwareModel
from powerplane.forecast.live import REGISTRY_FILE, LiveForecaster, prior_model
from powerplane.forecast.monitor import MonitoredForecaster
from powerplane.forecast.registry import Registry
from powerplane.telemetry.snapshot import LevelData, Snapshot
from powerplane.telemetry.tracker import Tracker
from powerplane.topology import Topology
from powerplane.twin.twin import Twin


@pytest.fixture(scope="module")
def small() -> tuple[object, Path]:
    return load_scenario("small")


def test_live_forecast_on_the_twin(small: tuple[object, Path]) -> None:
    site, path = small
    twin = Twin(site, path, dt_s=1.0)  # type: ignore[arg-type]
    tracker = Tracker(twin.topo, site)  # type: ignore[arg-type]
    fc = LiveForecaster(site, twin.topo)  # type: ignore[arg-type]
    first = fc.forecast(twin.now_s)
    assert first["t_s"] == [] and first["status"] == "no data yet"
    snap = None
    for k in range(20 * 6):  # 20 minutes, a snapshot every 10 s, a forecast asked every minute
        twin.advance(10)
        snap = tracker.ingest(twin.read(), twin.workload.gpu_job)
        fc.observe(snap)
        if k % 6 == 5:
            fc.forecast(snap.t_s)
    assert snap is not None
    # the forecasts made each minute are scored as their targets close: the band's scale learns from them
    assert fc.bands.resolved >= 15 and fc.bands.scale.size == 61
    timeline = twin.workload.sched.expected_timeline(snap.t_s)
    out = fc.forecast(snap.t_s, timeline)
    assert out["model"] == "job-aware prior"
    assert len(out["t_s"]) == 60 and out["t_s"][0] == pytest.approx(snap.t_s + 60.0)
    p10, p50, p90 = (np.array(out[k]) for k in ("p10_w", "p50_w", "p90_w"))
    assert np.all(np.isfinite(p50)) and np.all(p10 <= p50) and np.all(p50 <= p90)
    now_w = float(snap.levels["site"].values["facility_power_w"][0])
    assert np.all(np.abs(p50 - now_w) < 0.5 * now_w)
    racks = fc.forecast_racks(snap.t_s)
    assert racks is not None and racks["p50_w"].shape == (twin.topo.n_racks, 5)
    assert racks["hall_p50_w"].shape == (twin.topo.n_halls, 5) and np.all(racks["hall_p50_w"] > 0)
    assert np.all(racks["p10_w"] <= racks["p90_w"]) and racks["site_p50_w"][0] > 0
    # a snapshot without site power is counted, not fatal; a gap widens the band, never forecasts zero
    bad = Snapshot(snap.t_s + 60, snap.seq + 1, "twin", {"site": LevelData()}, {})
    fc.observe(bad)
    later = snap.t_s + 6 * 60
    fc.observe(Snapshot(later, snap.seq + 2, "twin", {"site": LevelData()}, {}))
    assert fc.rejected["no_site_power"] == 2
    stale = fc.forecast(later)
    assert stale["stale"] is True
    width = np.array(stale["p90_w"]) - np.array(stale["p10_w"])
    assert np.all(width > (p90 - p10)) and np.all(np.array(stale["p50_w"]) > 0)


def _snap(t_s: float, power_w: float, jobs: dict[int, float]) -> Snapshot:
    site = LevelData(
        values={"facility_power_w": np.array([power_w]), "it_power_w": np.array([power_w / 1.3])},
        quality={"facility_power_w": np.zeros(1, np.uint8), "it_power_w": np.zeros(1, np.uint8)},
    )
    ids = np.array(list(jobs), dtype=np.int64)
    return Snapshot(
        t_s,
        0,
        "test",
        {"site": site},
        {},
        job_ids=ids,
        job_power_w=np.array(list(jobs.values())),
        job_coverage=np.ones(ids.size),
    )


def _overpromising_champion(
    tmp_path: Path, small: tuple[object, Path], background: bool
) -> tuple[Registry, str, MonitoredForecaster, Callable[[int], None]]:
    """A registry whose champion (the prior) claims a 2 kW backtest MAE, its monitor, and ``feed(minute)``: the
    site with a job checkpointing every 25 minutes, which the prior cannot forecast that well."""
    site, _ = small
    topo = Topology.from_site(site)  # type: ignore[arg-type]
    reg = Registry(tmp_path / REGISTRY_FILE)
    champ = prior_model(1e6)
    champ.meta = {"backtest": {"15min": {"mae_w": 2000.0}}}  # a promise the prior cannot keep here
    v = reg.register("job-aware", champ.to_bytes(), champ.meta, t_s=0.0)
    reg.promote(v, t_s=0.0)
    mon = MonitoredForecaster(site, topo, tmp_path, background=background)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    t0 = 1.78e9

    def feed(m: int) -> None:
        big = 300e3 if m % 25 == 3 else 1000e3  # a job checkpointing every 25 minutes
        mon.observe(_snap(t0 + 60.0 * m, 400e3 + 1.3 * big + rng.normal(0, 4e3), {0: big, 1: 200e3}))

    return reg, v, mon, feed


def test_monitor_alerts_retrains_and_promotes_only_a_winner(tmp_path: Path, small: tuple[object, Path]) -> None:
    reg, v, mon, feed = _overpromising_champion(tmp_path, small, background=False)
    assert mon.model_name == f"job-aware {v}"
    for m in range(560):
        feed(m)
    alerts = mon.drain_alerts()
    assert alerts and alerts[0]["rule"] == "forecast_degraded" and alerts[0]["state"] == "firing"
    assert alerts[0]["value"] > 1.05
    tried = [a["retrain"] for a in alerts if "retrain" in a]
    done = [r for r in tried if r.get("trained")]
    assert done, tried
    assert done[0]["promoted"] is (done[0]["challenger_mae_w"] < done[0]["champion_mae_w"])
    assert done[0]["promoted"]  # the learned checkpoint rhythm beats the prior here
    assert reg.alias("champion") == done[0]["challenger"] == mon.version
    hist = reg.history("champion")
    assert hist[-1]["by"] == "monitor" and hist[-1]["from_version"] == v
    # the promoted model is a real job-aware model, loadable from the registry
    assert isinstance(JobAwareModel.from_bytes(reg.load("champion")[1]), JobAwareModel)


def test_monitor_in_the_background_trains_off_the_cycle_and_judges_when_done(
    tmp_path: Path, small: tuple[object, Path]
) -> None:
    reg, v, mon, feed = _overpromising_champion(tmp_path, small, background=True)
    m = 0
    while mon._training is None and m < 600:  # until the alert fires and a challenger is started
        feed(m)
        m += 1
    assert mon._training is not None, "the alert never started a challenger"
    first = mon.drain_alerts()
    fired = [a for a in first if a.get("state") == "firing" and "retrain" in a]
    assert fired and fired[-1]["retrain"] == {  # the first tries may lack history; this one started
        "trained": False,
        "started": True,
        "reason": "training a challenger in the background",
    }
    assert reg.alias("champion") == v  # nothing judged yet: the cycle did not wait for the training
    mon._training.result(timeout=120)  # the worker is done; the next minute closed judges it
    feed(m)
    feed(m + 1)
    assert mon._training is None
    done = [a["retrain"] for a in mon.drain_alerts() if a.get("retrain", {}).get("trained")]
    assert done and done[0]["promoted"] is (done[0]["challenger_mae_w"] < done[0]["champion_mae_w"])
    assert done[0]["promoted"] and reg.alias("champion") == done[0]["challenger"] == mon.version


def test_a_champion_this_code_cannot_read_is_reported_not_silently_replaced(
    tmp_path: Path, small: tuple[object, Path]
) -> None:
    site, _ = small
    topo = Topology.from_site(site)  # type: ignore[arg-type]
    reg = Registry(tmp_path / REGISTRY_FILE)
    assert LiveForecaster(site, topo, tmp_path).champion_problem is None  # type: ignore[arg-type]  # none yet
    old = json.loads(prior_model(1e6).to_bytes())
    old["features"] = [*old["features"][:-1], "a_feature_of_an_older_build"]
    v = reg.register("job-aware", json.dumps(old).encode(), {}, t_s=0.0)
    reg.promote(v, t_s=0.0)
    fc = LiveForecaster(site, topo, tmp_path)  # type: ignore[arg-type]
    assert fc.version == "prior"
    assert fc.champion_problem is not None and f"champion {v} cannot be loaded" in fc.champion_problem
    assert "do not match this code's" in fc.champion_problem
    assert fc.forecast(1.78e9)["champion_problem"] == fc.champion_problem
