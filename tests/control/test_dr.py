"""Demand response: baseline rules, the batteries' sustainable share, cap levels and the level controller."""

import numpy as np
import pytest

from powerplane.control.dr import (
    DAY_S,
    DrComputeLevel,
    LoadHistory,
    baseline_w,
    caps_for_level,
    marginal_facility_per_gpu_w,
    sustainable_discharge_w,
)


def test_baseline_prior_days_then_pre_event_hour() -> None:
    t = np.arange(0.0, 3 * DAY_S, 900.0)
    load = 10.0 + (t // DAY_S) * 2.0 + ((t % DAY_S) >= 15 * 3600) * 1.0  # 1 more in the afternoons; +2 per day
    start, end = 2 * DAY_S + 15 * 3600, 2 * DAY_S + 18 * 3600
    # Same hours of days 0 and 1: 11 and 13.
    assert baseline_w(t, load, start, end) == (pytest.approx(12.0), "prior days")
    # A first-day event: the hour before it (14:00-15:00 of day 0: 10).
    assert baseline_w(t, load, 15 * 3600.0, 18 * 3600.0) == (pytest.approx(10.0), "pre-event hour")
    assert baseline_w(np.zeros(0), np.zeros(0), 0.0, 1.0)[1] == "last reading"


def test_sustainable_share_and_marginal_watts() -> None:
    # 0.4 of 1 MWh above the floor, 90 % discharge efficiency, over an hour: 360 kW.
    p = sustainable_discharge_w(
        np.array([0.6]), np.array([0.2]), np.array([3.6e9]), np.array([0.9]), np.array([1e6]), 3600.0
    )
    assert p == pytest.approx(360e3)
    # ... but never above nameplate.
    assert sustainable_discharge_w(
        np.array([0.6]), np.array([0.2]), np.array([3.6e9]), np.array([0.9]), np.array([1e5]), 3600.0
    ) == pytest.approx(1e5)
    # 1.45 IT watts per GPU watt, then 5 % other loads and cooling at COP 4.
    assert marginal_facility_per_gpu_w(0.45, 0.05, 4.0) == pytest.approx(1.45 * 1.3)


def test_caps_for_level_lowest_class_first() -> None:
    cls = np.array([2, 1, 0, -1])  # low, normal, core, idle
    lo, hi = np.full(4, 200.0), np.full(4, 1000.0)
    caps = caps_for_level(1.5, lo, hi, cls, ["low", "normal"])
    assert caps[:2].tolist() == [200.0, 600.0]
    assert np.isnan(caps[2:]).all()  # core is not in the allowed classes; idle GPUs are never capped
    assert np.isnan(caps_for_level(0.0, lo, hi, cls, ["low", "normal"])).all()


def test_level_walks_through_the_classes_and_back() -> None:
    ctl = DrComputeLevel(["low", "normal"], gain=1.0)
    span = np.array([1000.0, 4000.0])  # GPU watts per unit of level in each class
    assert ctl.update(1000.0, span, 2.0) == pytest.approx(0.5)  # 500 GPU W of the low class's 1000
    assert ctl.update(3000.0, span, 2.0) == pytest.approx(1.25)  # 500 to finish low, 1000 of normal's 4000
    assert ctl.update(-4000.0, span, 2.0) == pytest.approx(0.0)  # give back all 2000 GPU W
    # A class with nothing to cut is skipped; the level never passes the last class.
    assert ctl.update(1e9, np.array([0.0, 4000.0]), 2.0) == pytest.approx(2.0)
    # Given the block's length the gain is 1 - exp(-block / tau): the same correction per second of any cycle.
    ctl = DrComputeLevel(["low"], tau_s=60.0)
    assert ctl.update(1000.0, np.array([1000.0]), 1.0, block_s=60.0) == pytest.approx(1 - np.exp(-1.0))


def test_load_history_bins_per_minute_and_forgets() -> None:
    h = LoadHistory(keep_s=120.0)
    h.add(0.0, 10.0)
    h.add(30.0, 20.0)
    h.add(61.0, 5.0, weight=2.0)
    h.add(70.0, float("nan"))  # skipped
    t, v = h.arrays()
    assert t.tolist() == [0.0, 60.0] and v.tolist() == [15.0, 5.0]
    h.add(200.0, 1.0)
    assert h.arrays()[0].tolist() == [60.0, 180.0]  # bins from 120 s before the newest one are kept
    h.add(250.0, 3.0)
    assert h.arrays()[0].tolist() == [180.0, 240.0]
    assert h.last_w() == 3.0
