"""A typical year of hourly weather at a site, and the clock arithmetic that looks it up.

Every array of a :class:`WeatherYear` has 8,760 samples. Sample ``i`` is the value at the *instant* ``i``
hours after January 1 00:00 of a non-leap year in the site's local **standard** time (a fixed UTC offset, no
daylight saving), and :func:`interpolate_hourly` interpolates linearly between samples, wrapping from
December 31 23:00 back to January 1 00:00. A simulation at any date looks the weather up by month, day and
time of day (:func:`hour_of_year`); February 29 reads February 28.

Two file formats are read (``WeatherConfig.kind``):

- ``tmy3``: a TMY3 file (pvlib ``read_tmy3``). Irradiance is the average over the hour *ending* at the
  stamp and is moved to the instants by averaging neighbouring hours (the interval averages are taken as
  values at the interval midpoints and interpolated linearly); temperature, wind and pressure are
  instantaneous at the stamp.
- ``windpowerlib``: the two-header-row CSV of windpowerlib's example weather (pressure [Pa], temperature
  [K] at 2 m and 10 m, wind speed [m/s] at several heights, roughness length [m]). Its wall-clock month,
  day and hour are taken as the site's standard time (the file is a stand-in climate). It has no
  irradiance: GHI, DNI and DHI are pvlib's Ineichen clear-sky irradiance at the site multiplied by
  :data:`CLOUDINESS_FACTOR`.

References
----------
.. [1] S. Wilcox and W. Marion, "Users Manual for TMY3 Data Sets", NREL/TP-581-43156, 2008.
.. [2] P. Ineichen and R. Perez, "A new airmass independent formulation for the Linke turbidity coefficient",
   Solar Energy 73(3), 151-157, 2002.
.. [3] S. Haas et al., "windpowerlib - a Python library to model wind power plants", JOSS 9(93), 5464, 2024.
"""

from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from powerplane.config.loader import resolve_data_file
from powerplane.config.schema import WeatherConfig
from powerplane.core.errors import ConfigError

HOURS_PER_YEAR = 8760
"""Hours in the typical (non-leap) year [h]."""

TYPICAL_YEAR = 2023
"""Calendar year used where a concrete date is needed (solar geometry); any non-leap year would do."""

CLOUDINESS_FACTOR = 0.75
"""Share of clear-sky irradiance kept for files without irradiance (``windpowerlib`` kind) [-].

A crude all-sky stand-in: long-term mean GHI is roughly 70-80 % of clear-sky GHI at sunny continental sites.
GHI, DNI and DHI are all scaled by it, so GHI = DNI cos(zenith) + DHI still holds.
"""

DEFAULT_ROUGHNESS_LENGTH_M = 0.15
"""Surface roughness length used when the file gives none (farmland with hedges) [m]."""

_S_PER_H = 3600.0
_S_PER_DAY = 86400
# 0-based day of year of March 1 in a non-leap year; in a leap year it is 60 (Feb 29 is day 59).
_MAR1_DOY = 59
_CUM_DAYS = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334])


@dataclass(frozen=True, eq=False)
class WeatherYear:
    """A typical year of hourly weather; every array has shape (8760,) and is read-only.

    Attributes
    ----------
    temp_air_c : air temperature at ``temp_height_m`` [C] (with the configured offset applied)
    ghi_w_m2, dni_w_m2, dhi_w_m2 : global horizontal, direct normal and diffuse horizontal irradiance [W/m^2]
    wind_speed_10m_m_s : wind speed at 10 m [m/s]
    wind_heights_m : heights of the rows of ``wind_speeds_m_s`` [m], ascending
    wind_speeds_m_s : wind speed at each height [m/s], shape (len(wind_heights_m), 8760)
    pressure_pa : surface air pressure [Pa]
    roughness_length_m : surface roughness length [m]
    temp_height_m : height of ``temp_air_c`` above ground [m]
    source : what the year was read from and how irradiance was obtained
    """

    temp_air_c: NDArray[np.float64]
    ghi_w_m2: NDArray[np.float64]
    dni_w_m2: NDArray[np.float64]
    dhi_w_m2: NDArray[np.float64]
    wind_speed_10m_m_s: NDArray[np.float64]
    wind_heights_m: tuple[float, ...]
    wind_speeds_m_s: NDArray[np.float64]
    pressure_pa: NDArray[np.float64]
    roughness_length_m: NDArray[np.float64]
    temp_height_m: float
    source: str

    def windpowerlib_frame(self) -> pd.DataFrame:
        """The year as windpowerlib's weather DataFrame (columns ``(variable_name, height)``, SI units, K)."""
        columns: dict[tuple[str, float], NDArray[np.float64]] = {
            ("pressure", 0.0): self.pressure_pa,
            ("temperature", self.temp_height_m): self.temp_air_c + 273.15,
            ("roughness_length", 0.0): self.roughness_length_m,
        }
        for height, speed in zip(self.wind_heights_m, self.wind_speeds_m_s, strict=True):
            columns[("wind_speed", height)] = speed
        frame = pd.DataFrame({k: np.array(v) for k, v in columns.items()})
        frame.columns = pd.MultiIndex.from_tuples(list(columns), names=["variable_name", "height"])
        return frame


# ----------------------------------------------------------------------------------------------- clock


@functools.lru_cache(maxsize=64)
def standard_utc_offset_s(timezone: str, year: int = TYPICAL_YEAR) -> float:
    """The zone's standard (non-daylight-saving) UTC offset on January 1 of ``year`` [s].

    ``utcoffset - dst`` at that instant, so zones observing daylight saving in January (southern hemisphere)
    still give their standard offset.

    >>> standard_utc_offset_s("America/Chicago")
    -21600.0
    """
    when = _dt.datetime(year, 1, 1, 12, tzinfo=ZoneInfo(timezone))
    offset = when.utcoffset() or _dt.timedelta(0)
    dst = when.dst() or _dt.timedelta(0)
    return (offset - dst).total_seconds()


def _year_of(t_s: NDArray[np.float64]) -> int:
    if t_s.size == 0:
        return TYPICAL_YEAR
    return int(np.asarray(t_s.flat[0], dtype="datetime64[s]").astype("datetime64[Y]").astype(np.int64)) + 1970


def _hour_of_year_from_local_s(local_s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Fractional hour of the typical year for local epoch seconds (Feb 29 maps onto Feb 28).

    Integer civil-calendar arithmetic (H. Hinnant, "chrono-compatible low-level date algorithms"): the day
    of a March-based year gives the day of a non-leap January-based year without knowing the year.
    """
    days_f = np.floor(local_s / _S_PER_DAY)
    second_of_day = local_s - days_f * _S_PER_DAY
    z = days_f.astype(np.int64) + 719_468  # days since 0000-03-01
    doe = z % 146_097  # day of the 400-year era
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365  # year of the era
    doy_mar = doe - (365 * yoe + yoe // 4 - yoe // 100)  # 0 = March 1 ... 365 = February 29
    doy = np.where(doy_mar >= 306, np.minimum(doy_mar - 306, _MAR1_DOY - 1), doy_mar + _MAR1_DOY)
    hour = doy * 24.0 + second_of_day / _S_PER_H
    return np.mod(hour, HOURS_PER_YEAR)


def hour_of_year(t_s: NDArray[np.float64], timezone: str) -> NDArray[np.float64]:
    """Fractional hour of the typical year for epoch times, in local standard time [h], in [0, 8760).

    Uses one fixed offset (the zone's standard offset in January of the first timestamp's year): no
    daylight-saving jumps, matching the :class:`WeatherYear` clock. February 29 maps onto February 28, and
    December 31 24:00 wraps to 0. Vectorized: the offset is computed once, the rest is arithmetic.

    Parameters
    ----------
    t_s : seconds since the Unix epoch [s]
    timezone : IANA zone name of the site

    >>> float(hour_of_year(np.array([1_704_067_200.0 + 3 * 3600]), "UTC")[0])  # 2024-01-01 03:00 UTC
    3.0
    """
    t = np.asarray(t_s, dtype=np.float64)
    offset_s = standard_utc_offset_s(timezone, _year_of(t))
    return _hour_of_year_from_local_s(t + offset_s)


def interpolate_hourly(hourly: NDArray[np.float64], hour: NDArray[np.float64]) -> NDArray[np.float64]:
    """Linear interpolation of an hourly series at fractional hours, wrapping at the end of the series.

    Sample ``k`` of ``hourly`` is the value at hour ``k``; between the last sample and hour ``len(hourly)``
    the value moves linearly back to sample 0.

    Parameters
    ----------
    hourly : values at whole hours, shape (n,)
    hour : fractional hours at which to read (any real number; taken modulo n) [h]

    >>> interpolate_hourly(np.array([0.0, 10.0, 20.0]), np.array([0.5, 2.5, -0.5]))
    array([ 5., 10., 10.])
    """
    values = np.asarray(hourly, dtype=np.float64)
    n = values.shape[0]
    h = np.mod(np.asarray(hour, dtype=np.float64), n)
    i0 = np.floor(h).astype(np.intp)
    frac = h - i0
    i0 %= n  # h can round up to exactly n
    i1 = i0 + 1
    i1[i1 == n] = 0
    out: NDArray[np.float64] = values[i0] * (1.0 - frac) + values[i1] * frac
    return out


def typical_year_times_utc(timezone: str) -> pd.DatetimeIndex:
    """The 8,760 instants of the typical year (local standard time, hour 0 = Jan 1 00:00) in UTC."""
    offset = pd.Timedelta(seconds=standard_utc_offset_s(timezone))
    local = pd.date_range(f"{TYPICAL_YEAR}-01-01", periods=HOURS_PER_YEAR, freq="h", tz="UTC")
    return local - offset


# ------------------------------------------------------------------------------------------------ files


def _typical_positions(month: NDArray[np.int64], day: NDArray[np.int64], hour: NDArray[np.int64]) -> NDArray:
    """Index in the typical year of each (month, day, hour); -1 for February 29."""
    pos = (_CUM_DAYS[month - 1] + day - 1) * 24 + hour
    return np.where((month == 2) & (day == 29), -1, pos)


def _place(values: NDArray[np.float64], pos: NDArray, what: str) -> NDArray[np.float64]:
    """Put ``values`` at typical-year positions ``pos`` (``-1`` dropped), wrapping, checking full coverage."""
    keep = pos >= 0
    pos = np.mod(pos[keep], HOURS_PER_YEAR)
    out = np.full(HOURS_PER_YEAR, np.nan)
    out[pos] = values[keep]
    if len(np.unique(pos)) != HOURS_PER_YEAR:
        raise ConfigError(f"{what}: expected one value for each of the 8760 hours of a year", field="weather.file")
    return out


def _center_interval_averages(hour_ending_avg: NDArray[np.float64]) -> NDArray[np.float64]:
    """Instant values from averages over the hour ending at each instant.

    ``avg[i]`` covers (i-1, i], so the hour beginning at ``i`` is ``avg[i+1]``; the value at instant ``i``
    is the mean of the averages on either side (linear interpolation between the interval midpoints).
    """
    return 0.5 * (hour_ending_avg + np.roll(hour_ending_avg, -1))


def _fill(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Replace missing values by linear interpolation over the (circular) year."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    if bad.all():
        raise ConfigError("weather column has no valid values", field="weather.file")
    idx = np.arange(values.size)
    out = values.copy()
    out[bad] = np.interp(idx[bad], idx[~bad], values[~bad], period=values.size)
    return out


def _read_tmy3(path: Path) -> dict[str, NDArray[np.float64]]:
    import pvlib

    data, _meta = pvlib.iotools.read_tmy3(str(path), map_variables=True)
    dates = pd.to_datetime(data["Date (MM/DD/YYYY)"], format="%m/%d/%Y")
    hour_ending = data["Time (HH:MM)"].str.slice(0, 2).astype(int).to_numpy()
    month = dates.dt.month.to_numpy()
    day = dates.dt.day.to_numpy()
    pos = _typical_positions(month, day, hour_ending)  # the instant at the end of each hour

    def col(name: str, scale: float = 1.0) -> NDArray[np.float64]:
        return _fill(_place(data[name].to_numpy(dtype=np.float64) * scale, pos, f"{path.name} {name}"))

    return {
        "temp_air_c": col("temp_air"),
        "ghi_w_m2": _center_interval_averages(col("ghi")),
        "dni_w_m2": _center_interval_averages(col("dni")),
        "dhi_w_m2": _center_interval_averages(col("dhi")),
        "wind_speed_10m_m_s": col("wind_speed"),
        "pressure_pa": col("pressure", 100.0),  # TMY3 pressure is in mbar
    }


class _WindFile(NamedTuple):
    temp_air_c: NDArray[np.float64]
    temp_height_m: float
    wind_heights_m: tuple[float, ...]
    wind_speeds_m_s: NDArray[np.float64]
    pressure_pa: NDArray[np.float64]
    roughness_length_m: NDArray[np.float64]


def _read_windpowerlib(path: Path) -> _WindFile:
    frame = pd.read_csv(path, header=[0, 1], index_col=0)
    # Stamps carry the file's own offsets, daylight saving included (+01:00 and +02:00 in the shipped file):
    # read them in the file's standard time, the smallest offset present.
    stamps = pd.Index([str(s) for s in frame.index])
    utc = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True)).tz_localize(None)
    suffix = stamps.str.extract(r"([+-])(\d\d):?(\d\d)$")
    if suffix.isna().any().any():
        offset_s = 0.0  # no offsets given: take the stamps as standard time
    else:
        sign = np.where(suffix[0] == "-", -1.0, 1.0)
        offset_s = float(np.min(sign * (suffix[1].astype(int) * 3600.0 + suffix[2].astype(int) * 60.0)))
    wall = utc + pd.Timedelta(seconds=offset_s)
    pos = _typical_positions(wall.month.to_numpy(), wall.day.to_numpy(), wall.hour.to_numpy())
    columns: dict[tuple[str, float], NDArray[np.float64]] = {}
    for key in frame.columns:
        name, height = key[0], key[1]
        values = frame[key].to_numpy(dtype=np.float64)
        columns[(str(name), float(height))] = _fill(_place(values, pos, f"{path.name} {name}@{height}"))
    temps = sorted(h for n, h in columns if n == "temperature")
    winds = sorted(h for n, h in columns if n == "wind_speed")
    pressures = [v for (n, _h), v in columns.items() if n == "pressure"]
    if not temps or not winds or not pressures:
        raise ConfigError(f"{path.name}: expected pressure, temperature and wind_speed columns", field="weather.file")
    roughs = [v for (n, _h), v in columns.items() if n == "roughness_length"]
    return _WindFile(
        temp_air_c=columns[("temperature", temps[0])] - 273.15,
        temp_height_m=temps[0],
        wind_heights_m=tuple(winds),
        wind_speeds_m_s=np.vstack([columns[("wind_speed", h)] for h in winds]),
        pressure_pa=pressures[0],
        roughness_length_m=roughs[0] if roughs else np.full(HOURS_PER_YEAR, DEFAULT_ROUGHNESS_LENGTH_M),
    )


def _clear_sky(latitude: float, longitude: float, timezone: str) -> dict[str, NDArray[np.float64]]:
    import pvlib

    times = typical_year_times_utc(timezone)
    location = pvlib.location.Location(latitude, longitude, tz="UTC")
    cs = location.get_clearsky(times, model="ineichen")
    return {
        f"{k}_w_m2": np.clip(cs[k].to_numpy(dtype=np.float64), 0.0, None) * CLOUDINESS_FACTOR
        for k in ("ghi", "dni", "dhi")
    }


def _frozen(values: object) -> NDArray[np.float64]:
    arr = np.array(values, dtype=np.float64)
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=16)
def _load_cached(
    kind: str,
    path: str,
    temp_offset_c: float,
    wind_path: str | None,
    latitude: float,
    longitude: float,
    timezone: str,
) -> WeatherYear:
    if kind == "tmy3":
        tmy = _read_tmy3(Path(path))
        irradiance = {k: tmy[k] for k in ("ghi_w_m2", "dni_w_m2", "dhi_w_m2")}
        temp_air_c, pressure_pa, temp_height_m = tmy["temp_air_c"], tmy["pressure_pa"], 2.0
        source = f"tmy3 {Path(path).name} (measured irradiance)"
        if wind_path is None:
            heights: tuple[float, ...] = (10.0,)
            speeds = tmy["wind_speed_10m_m_s"][np.newaxis, :]
            rough = np.full(HOURS_PER_YEAR, DEFAULT_ROUGHNESS_LENGTH_M)
        else:
            wind = _read_windpowerlib(Path(wind_path))
            heights, speeds, rough = wind.wind_heights_m, wind.wind_speeds_m_s, wind.roughness_length_m
            source += f", wind from {Path(wind_path).name}"
    elif kind == "windpowerlib":
        wind = _read_windpowerlib(Path(path))
        irradiance = _clear_sky(latitude, longitude, timezone)
        temp_air_c, pressure_pa, temp_height_m = wind.temp_air_c, wind.pressure_pa, wind.temp_height_m
        heights, speeds, rough = wind.wind_heights_m, wind.wind_speeds_m_s, wind.roughness_length_m
        source = f"windpowerlib {Path(path).name} (Ineichen clear sky x {CLOUDINESS_FACTOR} for irradiance)"
    else:
        raise ConfigError(f"unknown weather kind {kind!r}; expected tmy3 or windpowerlib", field="weather.kind")
    if temp_offset_c:
        source += f", temperature {temp_offset_c:+g} C"
    if 10.0 in heights:
        wind10 = speeds[heights.index(10.0)]
    else:  # logarithmic wind profile from the lowest height
        z0 = rough
        wind10 = speeds[0] * np.log(10.0 / z0) / np.log(heights[0] / z0)
    return WeatherYear(
        temp_air_c=_frozen(temp_air_c + temp_offset_c),
        ghi_w_m2=_frozen(irradiance["ghi_w_m2"]),
        dni_w_m2=_frozen(irradiance["dni_w_m2"]),
        dhi_w_m2=_frozen(irradiance["dhi_w_m2"]),
        wind_speed_10m_m_s=_frozen(wind10),
        wind_heights_m=tuple(float(h) for h in heights),
        wind_speeds_m_s=_frozen(speeds),
        pressure_pa=_frozen(pressure_pa),
        roughness_length_m=_frozen(rough),
        temp_height_m=temp_height_m,
        source=source,
    )


def load_weather_year(
    cfg: WeatherConfig, site_file: Path | None, latitude: float, longitude: float, timezone: str
) -> WeatherYear:
    """Read a typical year of hourly weather for a site (cached per file and options).

    Parameters
    ----------
    cfg : the site's weather configuration (``kind``, ``file``, ``temp_offset_c``, ``wind_file``)
    site_file : the site YAML the configuration came from; relative paths are resolved against it
    latitude, longitude : site position [degrees], used for clear-sky irradiance (``windpowerlib`` kind)
    timezone : IANA zone of the site; its standard offset fixes the clock of the year

    Returns
    -------
    WeatherYear with read-only arrays of 8,760 hourly values. ``temp_offset_c`` is added to air
    temperature. Leap-year files (8,784 hours) lose February 29. With ``wind_file`` (``tmy3`` kind) wind
    speeds and roughness come from that windpowerlib-format file.
    """
    path = resolve_data_file(cfg.file, site_file)
    wind_path = resolve_data_file(cfg.wind_file, site_file) if cfg.wind_file else None
    return _load_cached(
        cfg.kind,
        str(path.resolve()),
        float(cfg.temp_offset_c),
        str(wind_path.resolve()) if wind_path else None,
        float(latitude),
        float(longitude),
        timezone,
    )
