"""Photovoltaic plant output over a typical year: the PVWatts model through pvlib.

The chain is the one of NREL's PVWatts [1]_: solar position (NREL SPA), plane-of-array irradiance
(Hay-Davies transposition), incidence-angle losses on the beam (physical IAM), cell temperature (Sandia
array performance model, open rack), DC power with a linear temperature coefficient, system losses, and the
PVWatts inverter clipped at its AC rating.

References
----------
.. [1] A. P. Dobos, "PVWatts Version 5 Manual", NREL/TP-6A20-62641, 2014.
.. [2] D. L. King, W. E. Boyson and J. A. Kratochvil, "Photovoltaic Array Performance Model",
   SAND2004-3535, 2004.
.. [3] W. F. Holmgren, C. W. Hansen and M. A. Mikofski, "pvlib python: a python package for modeling solar
   energy systems", JOSS 3(29), 884, 2018.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from powerplane.physics.weather import HOURS_PER_YEAR, WeatherYear, typical_year_times_utc

DEFAULT_GAMMA_PDC_PER_C = -0.0037
"""Temperature coefficient of DC power of a crystalline-silicon module [1/C] (PVWatts v8 standard module)."""

DEFAULT_LOSSES_FRACTION = 0.14
"""PVWatts default system losses: soiling, shading, mismatch, wiring, LID, availability [-]."""

DEFAULT_DC_AC_RATIO = 1.2
"""DC nameplate over inverter AC rating [-] (PVWatts default)."""

DEFAULT_ALBEDO = 0.2
"""Ground reflectance [-]."""


def pvwatts_ac_w(
    weather: WeatherYear,
    latitude: float,
    longitude: float,
    timezone: str,
    capacity_kw_dc: float,
    tilt_deg: float,
    azimuth_deg: float,
    *,
    gamma_pdc_per_c: float = DEFAULT_GAMMA_PDC_PER_C,
    losses_fraction: float = DEFAULT_LOSSES_FRACTION,
    dc_ac_ratio: float = DEFAULT_DC_AC_RATIO,
    eta_inv_nom: float = 0.96,
    albedo: float = DEFAULT_ALBEDO,
) -> NDArray[np.float64]:
    """AC output of a fixed-tilt PV plant at each hour of the typical year [W], shape (8760,).

    Parameters
    ----------
    weather : the site's typical year (irradiance [W/m^2], air temperature [C], 10 m wind [m/s])
    latitude, longitude : site position [degrees north, degrees east]
    timezone : IANA zone of the site (the year's clock is its standard time)
    capacity_kw_dc : DC nameplate at standard test conditions [kW]
    tilt_deg : module tilt from horizontal [degrees]
    azimuth_deg : module azimuth, clockwise from north (180 = south) [degrees]
    gamma_pdc_per_c : temperature coefficient of DC power [1/C]
    losses_fraction : DC system losses [-]
    dc_ac_ratio : DC nameplate over inverter AC rating [-]; AC output never exceeds
        ``capacity_kw_dc / dc_ac_ratio``
    eta_inv_nom : nominal inverter efficiency [-]
    albedo : ground reflectance [-]

    Returns
    -------
    AC power [W], never negative, zero when the sun is down.
    """
    if capacity_kw_dc <= 0:
        return np.zeros(HOURS_PER_YEAR)
    from pvlib import iam, inverter, irradiance, pvsystem, solarposition, temperature

    times = typical_year_times_utc(timezone)
    pos = solarposition.get_solarposition(
        times,
        latitude,
        longitude,
        pressure=np.asarray(weather.pressure_pa),
        temperature=np.asarray(weather.temp_air_c),
    )
    zenith = pos["apparent_zenith"].to_numpy(dtype=np.float64)
    sun_azimuth = pos["azimuth"].to_numpy(dtype=np.float64)
    dni_extra = irradiance.get_extra_radiation(times).to_numpy(dtype=np.float64)
    poa = irradiance.get_total_irradiance(
        tilt_deg,
        azimuth_deg,
        zenith,
        sun_azimuth,
        dni=np.asarray(weather.dni_w_m2),
        ghi=np.asarray(weather.ghi_w_m2),
        dhi=np.asarray(weather.dhi_w_m2),
        dni_extra=dni_extra,
        albedo=albedo,
        model="haydavies",
    )
    poa_direct = np.nan_to_num(np.asarray(poa["poa_direct"], dtype=np.float64))
    poa_diffuse = np.nan_to_num(np.asarray(poa["poa_diffuse"], dtype=np.float64))
    aoi = irradiance.aoi(tilt_deg, azimuth_deg, zenith, sun_azimuth)
    effective = poa_direct * np.nan_to_num(iam.physical(aoi)) + poa_diffuse
    params = temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    temp_cell = temperature.sapm_cell(
        poa_direct + poa_diffuse,
        np.asarray(weather.temp_air_c),
        np.asarray(weather.wind_speed_10m_m_s),
        **params,
    )
    pdc0_w = capacity_kw_dc * 1000.0
    pdc = pvsystem.pvwatts_dc(effective, temp_cell, pdc0_w, gamma_pdc_per_c) * (1.0 - losses_fraction)
    pac0_w = pdc0_w / dc_ac_ratio
    pac = inverter.pvwatts(np.clip(pdc, 0.0, None), pac0_w / eta_inv_nom, eta_inv_nom=eta_inv_nom)
    ac = np.nan_to_num(np.asarray(pac, dtype=np.float64))
    ac[zenith >= 90.0] = 0.0
    return np.clip(ac, 0.0, None)
