"""The forecast monitor's degradation alert in the live runtime: MonitoredForecaster -> alert context ->
the ForecastDegraded rule of the default rule file (AlertEngine), audited; rack forecasts follow the jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerplane.forecast.live import REGISTRY_FILE, prior_model
from powerplane.forecast.monitor import MonitoredForecaster
from powerplane.forecast.registry import Registry
from powerplane.runtime.live import LiveOptions, LiveRuntime


@pytest.mark.slow
def test_forecast_degraded_fires_in_the_live_runtime(tmp_path: Path) -> None:
    reg = Registry(tmp_path / REGISTRY_FILE)
    champ = prior_model(1e6)
    champ.meta = {"backtest": {"15min": {"mae_w": 1.0}}}  # a backtest error no live forecast can keep (1 W)
    v = reg.register("job-aware", champ.to_bytes(), champ.meta, t_s=0.0)
    reg.promote(v, t_s=0.0)
    opts = LiveOptions(
        scenario="small", speed=60, policy="none", state_dir=tmp_path / "state", history=False, heal=False
    )
    opts.forecast_registry = tmp_path
    rt = LiveRuntime(opts)
    assert isinstance(rt.forecaster, MonitoredForecaster) and rt.forecaster.version == v
    firing = None
    for _ in range(110):  # one simulated minute a cycle: 15 minutes ahead, then an hour scored
        st = rt.step()
        firing = next((a for a in st.alerts or [] if a["rule"] == "ForecastDegraded" and a["state"] == "firing"), None)
        if firing is not None:
            break
    assert firing is not None, rt.forecaster.error_ratio()
    assert firing["severity"] == "warning" and firing["value"] > 1.05
    assert rt.forecaster.degraded and st.cycle.errors == 0
    _, audit = rt.audit(limit=5000, actor="forecast")
    assert audit and audit[0]["rule"] == "forecast_degraded" and audit[0]["state"] == "firing"
    # the live forecaster got the placement and the weather: racks follow their jobs
    fc = rt.forecaster
    assert fc.gpu_job is not None and fc.weather_c is not None
    racks = fc.forecast_racks(st.t_s)
    assert racks is not None and racks["p50_w"].shape == (rt.topology.n_racks, 5)
    assert np.all(racks["p10_w"] <= racks["p50_w"]) and np.all(racks["p50_w"] <= racks["p90_w"])
    rt.stop()
