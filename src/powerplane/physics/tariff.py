"""Electricity tariffs: time-of-use energy prices, demand charges and contract-demand billing.

Tariffs run on the site's real local clock (daylight saving included): a period ``[18, 24)`` means 18:00 to
midnight on the wall clock. Three bill components are modelled, after FACTS.md:

- energy: imported energy [kWh] times the price of the time-of-use period it falls in; a critical-peak
  uplift multiplies the price in force during critical-peak hours of critical-peak months (China, NDRC 2021
  No. 1093); exported energy is credited at a flat export price;
- demand charge: the highest average import over an aligned window (15 min in the US) in each calendar month,
  times a rate per kW-month (NREL 2017 demand-charge survey);
- contract-demand billing (China two-part tariffs): demand above ``threshold`` x contract (105 %) is billed at
  ``over_multiplier`` x the rate (double), i.e. ``over_multiplier - 1`` times the rate on top.

Monthly charges are **prorated** by the share of the calendar month the series covers: a one-day simulation in
July pays 1/31 of July's demand charge (on that day's peak), so bills of runs of any length compare per day.

References
----------
.. [1] NDRC, "Notice on further improving the time-of-use electricity price mechanism", Price [2021] No. 1093.
.. [2] J. McLaren et al., "Identifying potential markets for behind-the-meter battery energy storage: a survey
   of U.S. demand charges", NREL/BR-6A20-68963, 2017.
"""

from __future__ import annotations

import calendar
import datetime as _dt
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import ArrayLike, NDArray

from powerplane.config.schema import TariffConfig

DEFAULT_PERIOD = "default"
"""Name of the time outside every listed period (the default price)."""

CRITICAL_PEAK_PERIOD = "critical_peak"
"""Name of critical-peak time (the price in force times ``1 + critical_peak_uplift``)."""

_J_PER_KWH = 3_600_000.0
_S_PER_H = 3600.0
_S_PER_DAY = 86400.0
# UTC offsets and daylight-saving transitions of every zone in use fall on quarter hours, so the offset, the
# local date and the month are constant within each aligned 15-minute block of UTC.
_BLOCK_S = 900.0


def _local_calendar(t_s: ArrayLike, timezone: str) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Local epoch seconds, month (1..12) and year of epoch times, on the zone's real (DST-aware) clock.

    The zone is consulted once per distinct 15-minute block of the input, the rest is array arithmetic.
    """
    t = np.asarray(t_s, dtype=np.float64)
    flat = t.ravel()
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return flat.copy().reshape(t.shape), empty.reshape(t.shape), empty.reshape(t.shape)
    block = np.floor(flat / _BLOCK_S).astype(np.int64)
    lo = int(block.min())
    span = int(block.max()) - lo + 1
    if span <= max(4 * flat.size, 100_000):  # dense: a lookup table without sorting
        present = np.zeros(span, dtype=bool)
        present[block - lo] = True
        uniq = np.flatnonzero(present) + lo
        slot = np.cumsum(present) - 1
        inverse = slot[block - lo]
    else:
        uniq, inverse = np.unique(block, return_inverse=True)
    tz = ZoneInfo(timezone)
    offset_s = np.empty(uniq.size)
    month = np.empty(uniq.size, dtype=np.int64)
    year = np.empty(uniq.size, dtype=np.int64)
    for i, b in enumerate(uniq.tolist()):
        when = _dt.datetime.fromtimestamp(b * _BLOCK_S, tz)
        offset_s[i] = (when.utcoffset() or _dt.timedelta(0)).total_seconds()
        month[i] = when.month
        year[i] = when.year
    local_s = flat + offset_s[inverse]
    return local_s.reshape(t.shape), month[inverse].reshape(t.shape), year[inverse].reshape(t.shape)


def local_hour_month(t_s: ArrayLike, timezone: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Local wall-clock hour of day [h] (0 <= h < 24, fractional) and month (1..12) of epoch times [s].

    Daylight saving is applied: during the repeated autumn hour the hour goes back, in spring it skips.

    >>> hour, month = local_hour_month([1_783_000_000.0], "America/Chicago")  # 2026-07-02 13:46:40 UTC
    >>> round(float(hour[0]), 4), int(month[0])
    (8.7778, 7)
    """
    local_s, month, _year = _local_calendar(t_s, timezone)
    hour = np.mod(local_s, _S_PER_DAY) / _S_PER_H
    return hour, month


def _in_hours(hour: NDArray[np.float64], ranges: list[tuple[int, int]]) -> NDArray[np.bool_]:
    mask = np.zeros(hour.shape, dtype=bool)
    for start, end in ranges:
        mask |= (hour >= start) & (hour < end)
    return mask


def _period_index(
    hour: NDArray[np.float64], month: NDArray[np.int64], tariff: TariffConfig
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """Index of the first matching period (``len(periods)`` for the default) and the critical-peak mask."""
    n = len(tariff.periods)
    index = np.full(hour.shape, n, dtype=np.intp)
    for k in range(n - 1, -1, -1):  # last to first, so the first matching period wins
        period = tariff.periods[k]
        index[np.isin(month, period.months) & _in_hours(hour, period.hours)] = k
    critical = np.isin(month, tariff.critical_peak_months) & _in_hours(hour, tariff.critical_peak_hours)
    return index, critical


def _prices(hour: NDArray[np.float64], month: NDArray[np.int64], tariff: TariffConfig) -> NDArray[np.float64]:
    index, critical = _period_index(hour, month, tariff)
    table = np.array([p.price_per_kwh for p in tariff.periods] + [tariff.default_price_per_kwh])
    price: NDArray[np.float64] = table[index] * np.where(critical, 1.0 + tariff.critical_peak_uplift, 1.0)
    return price


def price_per_kwh(t_s: ArrayLike, tariff: TariffConfig, timezone: str) -> NDArray[np.float64]:
    """Energy price at each time [currency/kWh].

    The price of the first period (in the order listed) whose months contain the local month and whose
    ``[start, end)`` hour ranges contain the local hour, else the default price; in critical-peak hours of
    critical-peak months that price is multiplied by ``1 + critical_peak_uplift``.

    Parameters
    ----------
    t_s : seconds since the Unix epoch [s]
    tariff : the site's tariff
    timezone : IANA zone of the site (the tariff's clock, daylight saving included)
    """
    hour, month = local_hour_month(t_s, timezone)
    return _prices(hour, month, tariff)


def period_name(t_s: ArrayLike, tariff: TariffConfig, timezone: str) -> NDArray[np.str_]:
    """Name of the tariff period at each time: a period's name, :data:`DEFAULT_PERIOD` outside every
    period, or :data:`CRITICAL_PEAK_PERIOD` in critical-peak hours of critical-peak months."""
    hour, month = local_hour_month(t_s, timezone)
    index, critical = _period_index(hour, month, tariff)
    names = np.array([p.name for p in tariff.periods] + [DEFAULT_PERIOD, CRITICAL_PEAK_PERIOD])
    index = np.where(critical, len(tariff.periods) + 1, index)
    out: NDArray[np.str_] = names[index]
    return out


def window_average_w(
    t_s: ArrayLike, power_w: ArrayLike, window_s: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Average power over aligned windows (e.g. 15 min) of a regularly sampled series.

    Window ``k`` covers ``[k * window_s, (k + 1) * window_s)`` seconds since the epoch, so 15-minute windows
    start on the quarter hours of the local clock. The average is over the samples inside each window (each
    sample standing for one sampling step), so a partial first or last window is averaged over what exists.

    Parameters
    ----------
    t_s : sample times, seconds since the epoch [s] (any order)
    power_w : power at each sample [W]
    window_s : window length [s]

    Returns
    -------
    (window_start_s, mean_w): the start [s] and mean power [W] of every window that holds samples, in time
    order.

    >>> window_average_w([0.0, 300.0, 600.0, 900.0], [1.0, 2.0, 3.0, 10.0], 900.0)
    (array([  0., 900.]), array([ 2., 10.]))
    """
    t = np.asarray(t_s, dtype=np.float64).ravel()
    p = np.asarray(power_w, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"t_s and power_w differ in length ({t.size} and {p.size})")
    if t.size == 0:
        return np.zeros(0), np.zeros(0)
    window = np.floor(t / window_s).astype(np.int64)
    first = int(window.min())
    k = window - first
    counts = np.bincount(k)
    sums = np.bincount(k, weights=p)
    present = np.flatnonzero(counts)
    starts_s = (present + first).astype(np.float64) * float(window_s)
    mean_w: NDArray[np.float64] = sums[present] / counts[present]
    return starts_s, mean_w


@dataclass(frozen=True)
class Bill:
    """An electricity bill over a simulated period; money in ``currency``, energy in kWh, demand in kW.

    ``total = energy_cost - export_credit + demand_charge + contract_penalty``.
    """

    currency: str
    energy_cost: float
    export_credit: float
    demand_charge: float
    contract_penalty: float
    total: float
    peak_demand_kw: float
    import_kwh: float
    export_kwh: float

    def to_dict(self) -> dict[str, float | str]:
        """The bill as a plain dictionary (for JSON and tables)."""
        return asdict(self)


def bill(
    t_s: ArrayLike,
    grid_power_w: ArrayLike,
    dt_s: ArrayLike,
    tariff: TariffConfig,
    timezone: str,
    contract_demand_kw: float | None = None,
) -> Bill:
    """The bill for a series of grid power at the point of interconnection.

    Parameters
    ----------
    t_s : sample times, seconds since the epoch [s]; each sample stands for ``[t, t + dt)``
    grid_power_w : grid power [W], import positive, export negative
    dt_s : sampling step [s], a scalar or one per sample
    tariff : the site's tariff
    timezone : IANA zone of the site (local time, daylight saving included)
    contract_demand_kw : contracted demand [kW]; with ``tariff.contract_billing`` it sets the penalty
        threshold

    Notes
    -----
    - energy cost: ``sum(max(P, 0) dt / 3.6e6 * price)``; export credit ``sum(max(-P, 0) dt) / 3.6e6`` times
      the export price.
    - demand charge: for each local calendar month, the highest ``demand_window_min`` window average import
      (:func:`window_average_w`, never below 0) times ``demand_charge_per_kw_month``, times the share of
      the month covered (sum of ``dt`` in that month over the month's length in days x 86,400 s, at most 1).
    - contract penalty: for each month, ``(over_multiplier - 1) * rate * max(peak - threshold * contract, 0)``
      with the same proration.
    """
    t = np.asarray(t_s, dtype=np.float64).ravel()
    p = np.asarray(grid_power_w, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"t_s and grid_power_w differ in length ({t.size} and {p.size})")
    dt = np.broadcast_to(np.asarray(dt_s, dtype=np.float64), t.shape).ravel()
    local_s, month, year = _local_calendar(t, timezone)
    hour = np.mod(local_s, _S_PER_DAY) / _S_PER_H

    import_kwh = np.maximum(p, 0.0) * dt / _J_PER_KWH
    export_kwh = float(np.sum(np.maximum(-p, 0.0) * dt) / _J_PER_KWH)
    energy_cost = float(np.sum(import_kwh * _prices(hour, month, tariff)))
    export_credit = export_kwh * tariff.export_price_per_kwh

    demand_charge = 0.0
    contract_penalty = 0.0
    peak_demand_kw = 0.0
    if t.size:
        starts_s, mean_w = window_average_w(t, p, tariff.demand_window_min * 60.0)
        peak_demand_kw = max(float(mean_w.max()) / 1000.0, 0.0)
        _, w_month, w_year = _local_calendar(starts_s, timezone)
        w_key = w_year * 12 + (w_month - 1)
        keys, w_inverse = np.unique(w_key, return_inverse=True)
        peak_kw = np.zeros(keys.size)  # demand is never below 0
        np.maximum.at(peak_kw, w_inverse, mean_w / 1000.0)
        s_key = year * 12 + (month - 1)
        covered_s = np.array([dt[s_key == key].sum() for key in keys.tolist()])
        month_s = np.array([calendar.monthrange(k // 12, k % 12 + 1)[1] * _S_PER_DAY for k in keys.tolist()])
        share = np.minimum(covered_s / month_s, 1.0)
        rate = tariff.demand_charge_per_kw_month
        demand_charge = float(np.sum(rate * peak_kw * share))
        billing = tariff.contract_billing
        if billing is not None and contract_demand_kw is not None:
            excess_kw = np.maximum(peak_kw - billing.threshold * contract_demand_kw, 0.0)
            contract_penalty = float(np.sum((billing.over_multiplier - 1.0) * rate * excess_kw * share))

    return Bill(
        currency=tariff.currency,
        energy_cost=energy_cost,
        export_credit=export_credit,
        demand_charge=demand_charge,
        contract_penalty=contract_penalty,
        total=energy_cost - export_credit + demand_charge + contract_penalty,
        peak_demand_kw=peak_demand_kw,
        import_kwh=float(np.sum(import_kwh)),
        export_kwh=export_kwh,
    )
