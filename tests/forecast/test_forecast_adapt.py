"""Adaptive conformal bands: the band's width follows the coverage the forecasts get, learning only from the past."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.forecast.adapt import BandAdapter, adapt_sequence


def _coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((y >= lo) & (y <= hi)))


@pytest.mark.parametrize("half_width", [0.4, 3.0])
def test_a_band_too_narrow_or_too_wide_moves_to_80_percent(half_width: float) -> None:
    rng = np.random.default_rng(0)
    n = 20000
    origins = np.arange(n)
    h = np.array([1, 15])
    y = rng.normal(0.0, 1.0, (n, 2))  # the actual at origin + h; the median forecast is 0
    p50 = np.zeros((n, 2))
    lo, hi = adapt_sequence(origins, h, p50 - half_width, p50, p50 + half_width, y)
    before = _coverage(p50 - half_width, p50 + half_width, y)
    after = _coverage(lo[n // 2 :], hi[n // 2 :], y[n // 2 :])
    assert abs(before - 0.8) > 0.15
    assert after == pytest.approx(0.8, abs=0.02)
    np.testing.assert_array_equal(lo[:1, 0], -half_width)  # nothing resolved yet at the first origin
    # at origin 14 no 15-min forecast has resolved: its band is still the calibrated one
    assert lo[14, 1] == -half_width and hi[14, 1] == half_width
    assert np.all(lo <= p50) and np.all(hi >= p50)  # the median is never moved out of its band


def test_the_live_adapter_follows_the_same_sequence() -> None:
    rng = np.random.default_rng(1)
    n, hz = 600, np.array([1, 5])
    y = rng.normal(0.0, 1.0, n + 10)  # the observed value of each minute
    p50 = np.zeros((n, 2))
    band = np.full((n, 2), 0.5)
    actual = np.stack([y[np.arange(n) + k] for k in hz], axis=1)
    lo_seq, hi_seq = adapt_sequence(np.arange(n), hz, p50 - band, p50, p50 + band, actual)
    live = BandAdapter(hz)
    lo_live, hi_live = np.zeros((n, 2)), np.zeros((n, 2))
    for i in range(n):
        live.resolve(i, y[: i + 1])  # minute i has closed
        lo, hi = live.apply(p50[i] - band[i], p50[i], p50[i] + band[i])
        live.record(i, hz, lo, hi)
        lo_live[i], hi_live[i] = lo, hi
    np.testing.assert_allclose(lo_live, lo_seq)
    np.testing.assert_allclose(hi_live, hi_seq)
    assert live.resolved > 0 and 0 < live.missed < live.resolved
    # horizons it does not adapt keep their band; unobserved minutes are dropped unscored
    lo, _ = live.apply(np.array([-1.0]), np.array([0.0]), np.array([1.0]), np.array([60]))
    assert lo[0] == -1.0
    gap = BandAdapter(np.array([1]))
    gap.record(0, np.array([1]), np.array([-1.0]), np.array([1.0]))
    gap.resolve(5, np.array([0.0, np.nan]))
    assert gap.resolved == 0 and gap.scale[0] == 1.0
