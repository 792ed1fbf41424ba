"""Cooling plant COP curve and facility power, with exact answers."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.physics.cooling import cooling_power_w, cop, facility_power_w

CURVE = [(10.0, 8.0), (20.0, 4.0), (30.0, 2.0)]


def test_cop_interpolates_and_is_flat_beyond_the_ends() -> None:
    np.testing.assert_allclose(cop([-5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 45.0], CURVE), [8, 8, 6, 4, 3, 2, 2])


def test_single_point_curve_is_constant() -> None:
    np.testing.assert_allclose(cop([-10.0, 40.0], [(20.0, 5.0)]), [5.0, 5.0])


def test_cooling_power_is_heat_over_cop() -> None:
    np.testing.assert_allclose(cooling_power_w([6000.0, 6000.0, 1000.0], [15.0, 25.0, 40.0], CURVE), [1000, 2000, 500])


def test_facility_power() -> None:
    np.testing.assert_allclose(facility_power_w([1000.0, 0.0], [250.0, 10.0], 0.04), [1290.0, 10.0])


def test_scenario_curves_give_a_plausible_pue() -> None:
    for name in ("texas", "qingyang", "small"):
        site, _ = load_scenario(name)
        curve = site.cooling.cop_curve
        it_w = np.array([10e6, 10e6])
        facility = facility_power_w(it_w, cooling_power_w(it_w, [0.0, 40.0], curve), site.cooling.other_load_fraction)
        pue = facility / it_w
        # Cold weather: economisers; hot: chillers. Both within what real sites report.
        assert pue[0] == pytest.approx(1 + site.cooling.other_load_fraction + 1 / cop([0.0], curve)[0])
        assert 1.03 < pue[0] < pue[1] < 1.9, name
