"""Cooling plant power from the outdoor temperature, and the facility power it adds to the IT load.

The cooling plant (chillers, dry coolers, economisers, pumps and fans together) is described by one
coefficient-of-performance curve against outdoor dry-bulb temperature, ``COP = heat removed / electric
power``, interpolated linearly between the configured points and held flat beyond them. Power usage
effectiveness follows as ``PUE = 1 + other_load_fraction + 1 / COP`` when all IT power becomes heat.

References
----------
.. [1] ASHRAE, "Thermal Guidelines for Data Processing Environments", 5th ed., 2021.
.. [2] The Green Grid, "PUE: a comprehensive examination of the metric", White Paper 49, 2012.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def cop(outdoor_temp_c: ArrayLike, curve: Sequence[tuple[float, float]]) -> NDArray[np.float64]:
    """Coefficient of performance of the cooling plant [-] at an outdoor temperature.

    Parameters
    ----------
    outdoor_temp_c : outdoor dry-bulb temperature [C]
    curve : (outdoor temperature [C], COP [-]) points sorted by temperature; linear in between, flat beyond

    >>> cop([0.0, 15.0, 40.0], [(10.0, 8.0), (20.0, 4.0)])
    array([8., 6., 4.])
    """
    temps = np.array([point[0] for point in curve], dtype=np.float64)
    cops = np.array([point[1] for point in curve], dtype=np.float64)
    return np.asarray(np.interp(np.asarray(outdoor_temp_c, dtype=np.float64), temps, cops), dtype=np.float64)


def cooling_power_w(
    heat_w: ArrayLike, outdoor_temp_c: ArrayLike, curve: Sequence[tuple[float, float]]
) -> NDArray[np.float64]:
    """Electric power of the cooling plant [W] removing ``heat_w`` [W] of heat: ``heat / COP``.

    >>> cooling_power_w([1000.0], [15.0], [(10.0, 8.0), (20.0, 4.0)])
    array([166.66666667])
    """
    return np.asarray(heat_w, dtype=np.float64) / cop(outdoor_temp_c, curve)


def facility_power_w(
    it_power_w: ArrayLike, cooling_power_w: ArrayLike, other_load_fraction: float
) -> NDArray[np.float64]:
    """Facility power [W]: IT power, plus lighting, UPS and distribution losses in proportion, plus cooling.

    ``it * (1 + other_load_fraction) + cooling``.

    >>> facility_power_w([1000.0], [200.0], 0.05)
    array([1250.])
    """
    it = np.asarray(it_power_w, dtype=np.float64)
    return np.asarray(it * (1.0 + other_load_fraction) + np.asarray(cooling_power_w, dtype=np.float64))
