"""PVWatts output over the typical year of every shipped scenario."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.physics.solar import DEFAULT_DC_AC_RATIO, pvwatts_ac_w
from powerplane.physics.weather import HOURS_PER_YEAR, load_weather_year


def _solar(name: str, capacity_kw_dc: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    site, path = load_scenario(name)
    r = site.renewables
    weather = load_weather_year(r.weather, path, site.latitude, site.longitude, site.timezone)
    capacity = r.solar_kw_dc if capacity_kw_dc is None else capacity_kw_dc
    ac = pvwatts_ac_w(
        weather, site.latitude, site.longitude, site.timezone, capacity, r.solar_tilt_deg, r.solar_azimuth_deg
    )
    return ac, np.asarray(weather.ghi_w_m2), capacity


@pytest.mark.parametrize("name", ["texas", "qingyang", "small"])
def test_solar_output_is_sane(name: str) -> None:
    ac, ghi, capacity_kw = _solar(name)
    capacity_w = capacity_kw * 1000.0
    assert ac.shape == (HOURS_PER_YEAR,)
    assert np.isfinite(ac).all() and (ac >= 0).all()
    assert (ac[ghi == 0] == 0).all()  # nothing without light
    hour = np.arange(HOURS_PER_YEAR) % 24
    assert (ac[(hour <= 3) | (hour >= 22)] == 0).all()  # night
    # Peak AC near but below the DC nameplate: clipped at the inverter's AC rating.
    assert 0.6 * capacity_w < ac.max() <= capacity_w / DEFAULT_DC_AC_RATIO * (1 + 1e-9)
    assert 0.10 < ac.mean() / capacity_w < 0.30  # annual capacity factor
    # Midday beats morning on average.
    assert ac[hour == 12].mean() > 2 * ac[hour == 8].mean()


def test_zero_capacity_gives_zeros() -> None:
    ac, _, _ = _solar("texas", capacity_kw_dc=0.0)
    assert ac.shape == (HOURS_PER_YEAR,)
    assert not ac.any()


def test_output_scales_with_capacity() -> None:
    one, _, _ = _solar("small", capacity_kw_dc=100.0)
    two, _, _ = _solar("small", capacity_kw_dc=200.0)
    np.testing.assert_allclose(two, 2 * one, rtol=1e-9, atol=1e-9)
