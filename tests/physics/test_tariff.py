"""Tariffs: local clock, TOU prices, window averages and bills, with tiny hand-computed answers."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.config.schema import ContractBillingConfig, TariffConfig, TouPeriod
from powerplane.physics.tariff import (
    CRITICAL_PEAK_PERIOD,
    DEFAULT_PERIOD,
    bill,
    local_hour_month,
    period_name,
    price_per_kwh,
    window_average_w,
)

SHANGHAI = "Asia/Shanghai"
CHICAGO = "America/Chicago"
RATE = 30.0  # CNY per kW-month

GANSU = TariffConfig(
    currency="CNY",
    default_price_per_kwh=0.45,
    periods=[
        TouPeriod(name="peak", hours=[(7, 9), (18, 24)], price_per_kwh=0.675),
        TouPeriod(name="valley", hours=[(2, 4), (11, 17)], price_per_kwh=0.225),
    ],
    critical_peak_uplift=0.2,
    critical_peak_hours=[(19, 21)],
    critical_peak_months=[7],
    demand_charge_per_kw_month=RATE,
    demand_window_min=15,
    contract_billing=ContractBillingConfig(threshold=1.05, over_multiplier=2.0),
    export_price_per_kwh=0.1,
)


def _epoch(text: str, tz: str = SHANGHAI) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def _series(start: str, hours: float, dt_s: float, tz: str = SHANGHAI) -> np.ndarray:
    return _epoch(start, tz) + np.arange(0.0, hours * 3600.0, dt_s)


# ------------------------------------------------------------------------------------------- local clock


def test_local_hour_month_in_a_zone_without_dst() -> None:
    hour, month = local_hour_month([_epoch("2026-01-12T06:30:00"), _epoch("2026-07-31T23:45:00")], SHANGHAI)
    np.testing.assert_allclose(hour, [6.5, 23.75])
    assert month.tolist() == [1, 7]


def test_local_hour_month_follows_daylight_saving() -> None:
    utc = "UTC"
    t = [
        _epoch("2026-03-08T07:59:00", utc),  # 01:59 CST
        _epoch("2026-03-08T08:00:00", utc),  # 03:00 CDT: the clock skips 02:00-03:00
        _epoch("2026-11-01T06:30:00", utc),  # 01:30 CDT
        _epoch("2026-11-01T07:30:00", utc),  # 01:30 CST: the hour repeats
        _epoch("2026-08-01T04:59:00", utc),  # 23:59 CDT on July 31
        _epoch("2026-08-01T05:00:00", utc),  # 00:00 CDT on August 1
    ]
    hour, month = local_hour_month(t, CHICAGO)
    np.testing.assert_allclose(hour, [1 + 59 / 60, 3.0, 1.5, 1.5, 23 + 59 / 60, 0.0])
    assert month.tolist() == [3, 3, 11, 11, 7, 8]


def test_local_hour_month_keeps_shape_and_handles_sparse_times() -> None:
    t = np.array([[_epoch("2000-01-01T00:00:00"), _epoch("2030-06-01T12:00:00")]])
    hour, month = local_hour_month(t, SHANGHAI)
    assert hour.shape == (1, 2) and month.tolist() == [[1, 6]]
    np.testing.assert_allclose(hour, [[0.0, 12.0]])
    empty_hour, empty_month = local_hour_month(np.zeros(0), SHANGHAI)
    assert empty_hour.shape == (0,) and empty_month.shape == (0,)


def test_local_hour_month_fast_on_a_ten_day_run_at_one_second() -> None:
    t = _series("2026-07-14T00:00:00", 240, 1.0, CHICAGO)
    assert t.size == 864_000
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        hour, _month = local_hour_month(t, CHICAGO)
        best = min(best, time.perf_counter() - start)
    assert hour[0] == 0.0 and hour[-1] == pytest.approx(24 - 1 / 3600)
    assert best < 0.2


# ---------------------------------------------------------------------------------------------- prices


@pytest.mark.parametrize(
    ("stamp", "price", "name"),
    [
        ("2026-01-12T06:59:59", 0.45, DEFAULT_PERIOD),
        ("2026-01-12T07:00:00", 0.675, "peak"),
        ("2026-01-12T08:59:00", 0.675, "peak"),
        ("2026-01-12T09:00:00", 0.45, DEFAULT_PERIOD),
        ("2026-01-12T11:00:00", 0.225, "valley"),
        ("2026-01-12T19:30:00", 0.675, "peak"),  # critical peak only in July
        ("2026-07-12T19:30:00", 0.675 * 1.2, CRITICAL_PEAK_PERIOD),
        ("2026-07-12T21:00:00", 0.675, "peak"),
        ("2026-07-12T23:59:59", 0.675, "peak"),
        ("2026-07-13T00:00:00", 0.45, DEFAULT_PERIOD),
    ],
)
def test_price_and_period_name(stamp: str, price: float, name: str) -> None:
    t = np.array([_epoch(stamp)])
    assert price_per_kwh(t, GANSU, SHANGHAI)[0] == pytest.approx(price, rel=1e-12)
    assert period_name(t, GANSU, SHANGHAI)[0] == name


def test_first_matching_period_wins_and_months_restrict() -> None:
    tariff = TariffConfig(
        default_price_per_kwh=1.0,
        periods=[
            TouPeriod(name="a", hours=[(0, 12)], months=[6, 7, 8], price_per_kwh=2.0),
            TouPeriod(name="b", hours=[(6, 18)], price_per_kwh=3.0),
        ],
    )
    t = [_epoch(s) for s in ("2026-07-01T08:00:00", "2026-01-01T08:00:00", "2026-07-01T13:00:00")]
    np.testing.assert_allclose(price_per_kwh(t, tariff, SHANGHAI), [2.0, 3.0, 3.0])
    assert period_name(t, tariff, SHANGHAI).tolist() == ["a", "b", "b"]


def test_texas_summer_afternoon_prices() -> None:
    site, _ = load_scenario("texas")
    t = [_epoch(s, CHICAGO) for s in ("2026-07-14T15:00:00", "2026-07-14T17:00:00", "2026-01-14T15:00:00")]
    np.testing.assert_allclose(price_per_kwh(t, site.tariff, site.timezone), [0.120, 0.240, 0.045])


# --------------------------------------------------------------------------------------- window average


def test_window_average_blocks_and_partial_windows() -> None:
    # Minute samples from :10 to :39 past the hour: windows [0,15) partial, [15,30) full, [30,45) partial.
    t = 3600.0 + 60.0 * np.arange(10, 40)
    p = np.arange(10, 40, dtype=float)
    starts, mean = window_average_w(t, p, 900.0)
    np.testing.assert_allclose(starts, [3600.0, 4500.0, 5400.0])
    np.testing.assert_allclose(mean, [12.0, 22.0, 34.5])


def test_window_average_spike() -> None:
    t = 60.0 * np.arange(30)
    p = np.full(30, 1000.0)
    p[20] = 2500.0  # one minute at 2.5x in the second window
    _, mean = window_average_w(t, p, 900.0)
    np.testing.assert_allclose(mean, [1000.0, 1100.0])


# ------------------------------------------------------------------------------------------------ bills


def test_two_hours_across_a_tou_boundary() -> None:
    t = _series("2026-01-12T06:00:00", 2, 60.0)
    b = bill(t, np.full(t.size, 1.0e6), 60.0, GANSU, SHANGHAI)
    assert b.energy_cost == pytest.approx(1000 * 0.45 + 1000 * 0.675, rel=1e-12)
    assert b.import_kwh == pytest.approx(2000.0, rel=1e-12)
    assert b.peak_demand_kw == pytest.approx(1000.0, rel=1e-12)
    assert b.demand_charge == pytest.approx(RATE * 1000.0 * 7200 / (31 * 86400), rel=1e-12)
    assert b.contract_penalty == 0.0 and b.export_credit == 0.0
    assert b.total == pytest.approx(b.energy_cost + b.demand_charge, rel=1e-12)
    assert b.currency == "CNY"


def test_one_spike_sets_the_demand() -> None:
    t = _series("2026-01-12T12:00:00", 1, 60.0)  # valley
    p = np.full(t.size, 1.0e6)
    p[20] = 2.5e6  # one minute in the 12:15-12:30 window
    b = bill(t, p, 60.0, GANSU, SHANGHAI)
    assert b.peak_demand_kw == pytest.approx(1100.0, rel=1e-12)
    assert b.demand_charge == pytest.approx(RATE * 1100.0 * 3600 / (31 * 86400), rel=1e-12)
    assert b.energy_cost == pytest.approx((1000.0 + 1500.0 / 60.0) * 0.225, rel=1e-12)


def test_contract_demand_105_percent_rule() -> None:
    t = _series("2026-07-12T00:00:00", 24, 900.0)  # one day of July: 1/31 of the month
    over = bill(t, np.full(t.size, 1.1e6), 900.0, GANSU, SHANGHAI, contract_demand_kw=1000.0)
    assert over.demand_charge == pytest.approx(RATE * 1100.0 / 31, rel=1e-12)
    assert over.contract_penalty == pytest.approx((2.0 - 1.0) * RATE * (1100.0 - 1050.0) / 31, rel=1e-12)
    under = bill(t, np.full(t.size, 1.04e6), 900.0, GANSU, SHANGHAI, contract_demand_kw=1000.0)
    assert under.contract_penalty == 0.0
    no_contract = bill(t, np.full(t.size, 1.1e6), 900.0, GANSU, SHANGHAI)
    assert no_contract.contract_penalty == 0.0


def test_demand_is_per_calendar_month() -> None:
    t = _series("2026-01-31T23:00:00", 2, 60.0)  # one hour in January, one in February
    p = np.where(t < _epoch("2026-02-01T00:00:00"), 2.0e6, 1.0e6)
    b = bill(t, p, 60.0, GANSU, SHANGHAI)
    expected = RATE * 2000.0 * 3600 / (31 * 86400) + RATE * 1000.0 * 3600 / (28 * 86400)
    assert b.demand_charge == pytest.approx(expected, rel=1e-12)
    assert b.peak_demand_kw == pytest.approx(2000.0)


def test_export_is_credited_and_sets_no_demand() -> None:
    t = _series("2026-01-12T12:00:00", 1, 60.0)
    b = bill(t, np.full(t.size, -1.0e6), 60.0, GANSU, SHANGHAI)
    assert b.energy_cost == 0.0 and b.demand_charge == 0.0 and b.peak_demand_kw == 0.0
    assert b.export_kwh == pytest.approx(1000.0, rel=1e-12)
    assert b.export_credit == pytest.approx(100.0, rel=1e-12)
    assert b.total == pytest.approx(-100.0, rel=1e-12)
    d = b.to_dict()
    assert set(d) >= {"energy_cost", "export_credit", "demand_charge", "contract_penalty", "total"}
    assert d["currency"] == "CNY" and d["total"] == b.total


def test_full_month_pays_the_full_demand_charge() -> None:
    t = _series("2026-02-01T00:00:00", 28 * 24, 900.0)
    b = bill(t, np.full(t.size, 1.0e6), 900.0, GANSU, SHANGHAI)
    assert b.demand_charge == pytest.approx(RATE * 1000.0, rel=1e-12)


def test_empty_series_costs_nothing() -> None:
    b = bill(np.zeros(0), np.zeros(0), 1.0, GANSU, SHANGHAI, contract_demand_kw=1000.0)
    assert b.total == 0.0 and b.peak_demand_kw == 0.0
