"""Wind farm output over the typical year of every shipped scenario (windpowerlib, offline)."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.physics.weather import HOURS_PER_YEAR, WeatherYear, load_weather_year
from powerplane.physics.wind import farm_power_w, turbine_types


def _weather(name: str) -> WeatherYear:
    site, path = load_scenario(name)
    return load_weather_year(site.renewables.weather, path, site.latitude, site.longitude, site.timezone)


@pytest.mark.parametrize("name", ["texas", "qingyang", "small"])
def test_wind_output_is_sane(name: str) -> None:
    site, _ = load_scenario(name)
    r = site.renewables
    capacity_kw = r.wind_kw or 10_000.0  # texas has no wind farm: try its default turbine anyway
    power = farm_power_w(_weather(name), r.turbine_type, r.hub_height_m, capacity_kw)
    assert power.shape == (HOURS_PER_YEAR,)
    assert np.isfinite(power).all()
    assert power.min() >= 0 and power.max() <= capacity_kw * 1000.0 * (1 + 1e-12)
    assert 0.05 < power.mean() / (capacity_kw * 1000.0) < 0.60
    assert power.max() > 0.9 * capacity_kw * 1000.0  # rated wind happens some time in a year


def test_zero_capacity_gives_zeros() -> None:
    power = farm_power_w(_weather("qingyang"), "E-126/4200", 135.0, 0.0)
    assert power.shape == (HOURS_PER_YEAR,) and not power.any()


def test_output_scales_with_capacity() -> None:
    w = _weather("small")
    one = farm_power_w(w, "E-53/800", 80.0, 800.0)
    two = farm_power_w(w, "E-53/800", 80.0, 1600.0)
    np.testing.assert_allclose(two, 2 * one)


def test_higher_hub_sees_more_wind() -> None:
    w = _weather("qingyang")
    assert farm_power_w(w, "E-126/4200", 135.0, 4200.0).mean() > farm_power_w(w, "E-126/4200", 80.0, 4200.0).mean()


def test_unknown_turbine_lists_valid_ones() -> None:
    assert "E-126/4200" in turbine_types() and "E-53/800" in turbine_types()
    with pytest.raises(ValueError, match=r"unknown turbine type 'NoSuch/1'.*E-1"):
        farm_power_w(_weather("small"), "NoSuch/1", 100.0, 1000.0)
