"""Typical weather years: clock arithmetic (exact) and the shipped files of every scenario (sanity)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pvlib
import pytest

from powerplane.config import load_scenario
from powerplane.config.schema import WeatherConfig
from powerplane.physics.weather import (
    HOURS_PER_YEAR,
    WeatherYear,
    hour_of_year,
    interpolate_hourly,
    load_weather_year,
)

SCENARIOS = ["texas", "qingyang", "small"]
DATA = Path(__file__).resolve().parents[2] / "src" / "powerplane" / "data"


def _epoch(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def _weather(name: str) -> WeatherYear:
    site, path = load_scenario(name)
    return load_weather_year(site.renewables.weather, path, site.latitude, site.longitude, site.timezone)


# ------------------------------------------------------------------------------------------ exact answers


def test_interpolate_hourly_linear_and_wraps() -> None:
    hourly = np.array([0.0, 10.0, 20.0, 30.0])
    hours = np.array([0.0, 0.25, 1.5, 3.0, 3.5, 4.0, -0.5, 7.75])
    np.testing.assert_allclose(interpolate_hourly(hourly, hours), [0.0, 2.5, 15.0, 30.0, 15.0, 0.0, 15.0, 7.5])


@pytest.mark.parametrize(
    ("stamp", "tz", "expected_h"),
    [
        ("2023-01-01T00:00:00", "UTC", 0.0),
        ("2023-03-01T00:00:00", "UTC", 59 * 24.0),
        ("2024-02-28T12:00:00", "UTC", 58 * 24 + 12.0),
        ("2024-02-29T12:00:00", "UTC", 58 * 24 + 12.0),  # Feb 29 reads Feb 28
        ("2024-03-01T00:00:00", "UTC", 59 * 24.0),
        ("2024-12-31T23:30:00", "UTC", 8759.5),
        ("2023-07-15T18:00:00", "UTC", 195 * 24 + 12.0),
    ],
)
def test_hour_of_year_exact(stamp: str, tz: str, expected_h: float) -> None:
    t = np.array([_epoch(stamp, tz)])
    # UTC stamps with the Chicago zone: 18:00 UTC is 12:00 CST (standard time, not 13:00 CDT)
    zone = "America/Chicago" if stamp.startswith("2023-07-15") else tz
    assert hour_of_year(t, zone)[0] == pytest.approx(expected_h, abs=1e-9)


def test_hour_of_year_uses_standard_time_all_year() -> None:
    # Sydney keeps daylight saving in January (+11); its standard offset is +10.
    assert hour_of_year(np.array([_epoch("2023-01-01T00:00:00")]), "Australia/Sydney")[0] == pytest.approx(10.0)
    # Across the Chicago spring-forward the hour of year moves on smoothly, without a jump.
    t = _epoch("2023-03-12T07:00:00") + np.arange(0, 4 * 3600, 1800.0)
    assert np.allclose(np.diff(hour_of_year(t, "America/Chicago")), 0.5)


def test_hour_of_year_on_a_ten_day_run_at_one_second() -> None:
    # Speed is measured by benchmarks, not asserted here (a loaded CI machine must not fail correct code).
    t = _epoch("2026-07-14T06:00:00") + np.arange(864_000, dtype=np.float64)
    h = hour_of_year(t, "America/Chicago")
    assert h.shape == t.shape
    assert h[0] == pytest.approx(194 * 24.0)  # 2026-07-14 00:00 CST
    np.testing.assert_allclose(np.diff(h), 1.0 / 3600.0, rtol=1e-6)


# --------------------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_loads_a_full_sane_year(name: str) -> None:
    w = _weather(name)
    for field in (
        "temp_air_c",
        "ghi_w_m2",
        "dni_w_m2",
        "dhi_w_m2",
        "wind_speed_10m_m_s",
        "pressure_pa",
        "roughness_length_m",
    ):
        arr = getattr(w, field)
        assert arr.shape == (HOURS_PER_YEAR,), field
        assert np.isfinite(arr).all(), field
        assert not arr.flags.writeable, field
    assert w.wind_speeds_m_s.shape == (len(w.wind_heights_m), HOURS_PER_YEAR)
    assert -40 < w.temp_air_c.min() < w.temp_air_c.max() < 50
    assert (w.ghi_w_m2 >= 0).all() and w.ghi_w_m2.max() < 1200
    assert (w.dni_w_m2 >= 0).all() and (w.dhi_w_m2 >= 0).all()
    assert w.wind_speed_10m_m_s.min() >= 0 and w.wind_speed_10m_m_s.max() < 40
    assert 85_000 < w.pressure_pa.min() < w.pressure_pa.max() < 110_000
    midnight = np.arange(HOURS_PER_YEAR) % 24 == 0
    assert (w.ghi_w_m2[midnight] == 0).all()
    assert w.source


def test_loading_is_cached() -> None:
    assert _weather("qingyang") is _weather("qingyang")


def test_texas_is_greensboro_tmy3_plus_three_degrees() -> None:
    w = _weather("texas")
    raw, _ = pvlib.iotools.read_tmy3(str(Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"))
    # The first row is Jan 1, hour ending 01:00: an instantaneous temperature at 01:00.
    assert w.temp_air_c[1] == pytest.approx(raw["temp_air"].iloc[0] + 3.0)
    # Irradiance averages over the hour ending at the stamp are centred: instant 12:00 on Jan 1 averages the
    # hours ending 12:00 and 13:00.
    assert w.ghi_w_m2[12] == pytest.approx(0.5 * (raw["ghi"].iloc[11] + raw["ghi"].iloc[12]))
    july = np.arange(181 * 24, 212 * 24)
    afternoon = july[np.isin(july % 24, [14, 15, 16])]
    assert 25.0 < np.median(w.temp_air_c[afternoon]) < 40.0
    assert 25.0 < w.temp_air_c[afternoon].max() < 42.0


def test_windpowerlib_file_is_read_in_standard_time() -> None:
    w = _weather("small")  # no temperature offset
    raw = pd.read_csv(DATA / "windpowerlib_weather_2010_hourly.csv", header=[0, 1], index_col=0)
    temp_2m = raw[("temperature", "2")]
    assert w.temp_air_c[0] == pytest.approx(temp_2m["2010-01-01 00:00:00+01:00"] - 273.15)
    # A summer stamp at 12:00 +02:00 (daylight saving) is 11:00 standard time.
    assert w.temp_air_c[181 * 24 + 11] == pytest.approx(temp_2m["2010-07-01 12:00:00+02:00"] - 273.15)
    assert w.wind_heights_m == (10.0, 80.0)
    # Clear-sky irradiance closes: GHI = DNI cos(zenith) + DHI, so DHI <= GHI always.
    assert (w.dhi_w_m2 <= w.ghi_w_m2 + 1e-9).all()


def test_qingyang_temperature_offset() -> None:
    assert np.allclose(_weather("qingyang").temp_air_c, _weather("small").temp_air_c - 2.0)


def test_tmy3_with_a_wind_file_takes_its_wind() -> None:
    cfg = WeatherConfig(kind="tmy3", file="pvlib:723170TYA.CSV", wind_file="windpowerlib_weather_2010_hourly.csv")
    w = load_weather_year(cfg, None, 32.9, -97.0, "America/Chicago")
    assert w.wind_heights_m == (10.0, 80.0)
    assert np.array_equal(w.wind_speed_10m_m_s, _weather("small").wind_speed_10m_m_s)
    assert np.array_equal(w.ghi_w_m2, _weather("texas").ghi_w_m2)


def test_leap_year_file_drops_february_29(tmp_path: Path) -> None:
    stamps = pd.date_range("2012-01-01", periods=8784, freq="h")
    value = np.arange(8784, dtype=float)
    lines = [
        "variable_name,pressure,temperature,wind_speed,roughness_length",
        "height,0,2,10,0",
        *(f"{s:%Y-%m-%d %H:%M:%S},100000,{v},5.0,0.1" for s, v in zip(stamps, value, strict=True)),
    ]
    path = tmp_path / "leap.csv"
    path.write_text("\n".join(lines) + "\n")
    w = load_weather_year(WeatherConfig(kind="windpowerlib", file=str(path)), None, 35.0, 105.0, "Asia/Shanghai")
    kelvin = w.temp_air_c + 273.15
    assert kelvin.shape == (HOURS_PER_YEAR,)
    assert kelvin[58 * 24 + 23] == pytest.approx(58 * 24 + 23)  # Feb 28 23:00
    assert kelvin[59 * 24] == pytest.approx(60 * 24)  # Mar 1 00:00: the file's hour 60 x 24
    assert kelvin[-1] == pytest.approx(8783)
