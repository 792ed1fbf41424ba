"""The mpc planner on the job-aware forecaster's quantiles (issue 5's integration): exact slots, fallbacks, live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powerplane.config.loader import load_scenario
from powerplane.runtime.energy_mpc import MpcPolicy
from powerplane.runtime.live import LiveOptions, LiveRuntime
from powerplane.twin.twin import Twin


def _policy() -> MpcPolicy:
    site, path = load_scenario("small")
    pol = MpcPolicy(Twin(site, path, seed=0, dt_s=1.0), [])
    pol._facility_now_w, pol._it_now_w = 200e3, 100e3  # IT is half of facility power now
    return pol


def _forecast(t0: float, p90_w: float, **extra: Any) -> dict[str, Any]:
    t = t0 + 60.0 * np.arange(1, 61)
    return {"model": "job-aware v1.0.0", "t_s": t.tolist(), "p10_w": [1.0] * 60, "p50_w": [2.0] * 60,
            "p90_w": [p90_w] * 60, **extra}  # fmt: skip


def test_planner_counts_on_the_forecast_p90_as_it_load() -> None:
    pol = _policy()
    t0 = 1_000_000.0
    pol.forecast_source = lambda now: _forecast(t0, 300e3)
    slots = t0 + 900.0 * np.arange(6)
    bands = pol._forecast_bands(t0, slots, 900.0)
    assert bands is not None
    it = bands[1]  # the P90 the plan's peak and contract rows count on
    np.testing.assert_allclose(it[:4], 150e3)  # 300 kW facility P90 x the present IT share 0.5
    assert np.all(np.isnan(it[4:]))  # past the forecast's hour: persistence fills these slots
    assert pol.it_source == "forecast job-aware v1.0.0"


@pytest.mark.parametrize(
    "fc",
    [None, {}, {"t_s": []}, "stale", "past", "nan"],
    ids=["none", "empty", "no-steps", "stale", "past-hour", "not-finite"],
)
def test_planner_falls_back_to_persistence_without_a_usable_forecast(fc: Any) -> None:
    pol = _policy()
    t0 = 1_000_000.0
    if fc == "stale":
        fc = _forecast(t0, 300e3, stale=True)
    elif fc == "past":
        fc = _forecast(t0 - 7200.0, 300e3)
    elif fc == "nan":
        fc = _forecast(t0, float("nan"))
    pol.forecast_source = lambda now: fc
    assert pol._forecast_bands(t0, t0 + 900.0 * np.arange(4), 900.0) is None


def test_live_mpc_replans_on_the_live_forecast(tmp_path: Path) -> None:
    # 600 simulated seconds a cycle, a replan every 15 minutes: the first plans have no forecast yet (the forecaster
    # needs a few observations); once it forecasts, the next replan counts on its P90.
    opts = LiveOptions(scenario="small", speed=600, period_s=1.0, state_dir=tmp_path / "state", history=False)
    rt = LiveRuntime(opts)
    try:
        first = rt.step()
        assert first.plan is not None and first.plan["it_source"] == "persistence"
        sources = []
        for _ in range(12):
            s = rt.step()
            assert s.plan is not None
            sources.append((bool(s.forecast and s.forecast.get("p90_w")), s.plan["it_source"]))
        had = [i for i, (fc, _) in enumerate(sources) if fc]
        assert had, "the live forecaster never produced a forecast"
        assert any(src.startswith("forecast") for _, src in sources[had[0] :]), sources
        assert rt.policy.stats.plan_failures == 0
    finally:
        rt.stop()
