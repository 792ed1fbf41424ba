"""Wind farm output over a typical year: windpowerlib's model chain with a manufacturer power curve.

Hub-height wind comes from the measured height closest to the hub by the logarithmic wind profile (using the
surface roughness length), air density from the barometric formula, and power from the turbine's power curve
in windpowerlib's turbine library (the ``oedb`` data shipped inside the windpowerlib package; nothing is
downloaded). The farm is that one turbine scaled to the farm's capacity: no wake or availability losses.

References
----------
.. [1] S. Haas et al., "windpowerlib - a Python library to model wind power plants", JOSS 9(93), 5464, 2024.
.. [2] J. F. Manwell, J. G. McGowan and A. L. Rogers, "Wind Energy Explained", 2nd ed., Wiley, 2009, ch. 2.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from numpy.typing import NDArray

from powerplane.physics.weather import HOURS_PER_YEAR, WeatherYear


@functools.lru_cache(maxsize=1)
def turbine_types() -> tuple[str, ...]:
    """Turbine types with a power curve in windpowerlib's local (shipped) turbine library, sorted."""
    from windpowerlib.data import get_turbine_types

    table = get_turbine_types(turbine_library="local", print_out=False, filter_=True)
    return tuple(sorted(table.loc[table["has_power_curve"], "turbine_type"].astype(str)))


def farm_power_w(
    weather: WeatherYear, turbine_type: str, hub_height_m: float, capacity_kw: float
) -> NDArray[np.float64]:
    """AC output of a wind farm at each hour of the typical year [W], shape (8760,).

    Parameters
    ----------
    weather : the site's typical year (wind speed at its heights [m/s], roughness [m], pressure [Pa],
        temperature [C])
    turbine_type : a type in windpowerlib's turbine library, e.g. ``"E-126/4200"`` (see :func:`turbine_types`)
    hub_height_m : hub height above ground [m]
    capacity_kw : farm nameplate [kW]; the single-turbine output is scaled by capacity / turbine rating

    Returns
    -------
    Power [W] between 0 and ``capacity_kw * 1000``.

    Raises
    ------
    ValueError : the turbine type is not in the library (the message lists some valid ones).
    """
    if capacity_kw <= 0:
        return np.zeros(HOURS_PER_YEAR)
    valid = turbine_types()
    if turbine_type not in valid:
        examples = ", ".join([t for t in valid if t.startswith("E-")][:6] or valid[:6])
        raise ValueError(
            f"unknown turbine type {turbine_type!r}; valid types include {examples} "
            f"({len(valid)} in all: powerplane.physics.wind.turbine_types())"
        )
    from windpowerlib import ModelChain, WindTurbine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # windpowerlib warns about extrapolating the wind profile
        turbine = WindTurbine(turbine_type=turbine_type, hub_height=hub_height_m)
        chain = ModelChain(turbine).run_model(weather.windpowerlib_frame())
    one_turbine_w = np.nan_to_num(np.asarray(chain.power_output, dtype=np.float64))
    nominal_w = float(turbine.nominal_power)
    out = one_turbine_w * (capacity_kw * 1000.0 / nominal_w)
    return np.clip(out, 0.0, capacity_kw * 1000.0)
