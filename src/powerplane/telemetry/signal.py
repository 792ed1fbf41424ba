"""Signal measures of a power series: swings, ramp rates and band-limited spectral energy.

The grid-side specification proposed for AI training sites (arXiv 2508.14318, FACTS.md) bounds ramp rates in
MW/s and the share of spectral energy in a critical band (0.1-20 Hz, grid-critical 0.1-3 Hz).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.signal import welch


def largest_swing_w(power_w: ArrayLike, dt_s: float, window_s: float = 1.0) -> float:
    """Largest absolute change of power over ``window_s`` seconds [W] (``max |P(t + window) - P(t)|``)."""
    p = np.asarray(power_w, dtype=np.float64)
    lag = max(1, round(window_s / dt_s))
    if p.size <= lag:
        return 0.0
    return float(np.max(np.abs(p[lag:] - p[:-lag])))


def ramp_rates_w_per_s(power_w: ArrayLike, dt_s: float, window_s: float = 1.0) -> np.ndarray:
    """Ramp rate over each ``window_s`` [W/s]: (P(t + window) - P(t)) / window."""
    p = np.asarray(power_w, dtype=np.float64)
    lag = max(1, round(window_s / dt_s))
    return (p[lag:] - p[:-lag]) / (lag * dt_s)


def band_energy_share(
    power_w: ArrayLike, dt_s: float, band_hz: tuple[float, float] = (0.1, 3.0), segment_s: float = 409.6
) -> tuple[float, tuple[float, float]]:
    """Share of the fluctuation energy of a power series that lies in ``band_hz`` [-], and the band measured.

    Welch's method over segments of ``segment_s`` seconds with each segment's linear trend removed, so that the
    diurnal and weather-driven drift does not swamp the fast swings; the share is band power over all power above
    0 Hz. The band is cut at the Nyquist frequency (0.5 Hz at 1 s steps), which is returned with the share.
    """
    p = np.asarray(power_w, dtype=np.float64)
    fs = 1.0 / dt_s
    nyquist = fs / 2.0
    lo, hi = band_hz[0], min(band_hz[1], nyquist)
    nperseg = int(min(p.size, max(16, round(segment_s * fs))))
    if p.size < 16 or lo >= hi:
        return 0.0, (lo, hi)
    f, psd = welch(p, fs=fs, nperseg=nperseg, detrend="linear")
    total = float(psd[1:].sum())
    if total <= 0.0:
        return 0.0, (lo, hi)
    in_band = (f >= lo) & (f <= hi)
    return float(psd[in_band].sum() / total), (lo, hi)
