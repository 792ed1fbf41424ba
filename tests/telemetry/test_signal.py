import numpy as np
import pytest

from powerplane.telemetry.signal import band_energy_share, largest_swing_w, ramp_rates_w_per_s


def test_swing_and_ramp() -> None:
    p = np.array([0.0, 0.0, 5.0, 5.0, 1.0])
    assert largest_swing_w(p, 1.0) == 5.0
    assert largest_swing_w(p, 0.5, window_s=1.0) == 5.0
    np.testing.assert_allclose(ramp_rates_w_per_s(p, 1.0), [0, 5, 0, -4])


def test_band_share_of_a_tone() -> None:
    dt = 0.1
    t = np.arange(0, 3600, dt)
    inside = 1e6 * np.sign(np.sin(2 * np.pi * t / 2.0))  # 0.5 Hz square wave, like a 2 s training iteration
    share, band = band_energy_share(inside + 1e5 * t / 3600, dt)
    assert band == (0.1, 3.0)
    assert share > 0.9
    outside = 1e6 * np.sin(2 * np.pi * 4.0 * t)  # 4 Hz, above the band
    assert band_energy_share(outside, dt)[0] < 0.05
    share_1s, band_1s = band_energy_share(inside[::10], 1.0)
    assert band_1s == (0.1, 0.5) and share_1s == pytest.approx(share_1s)
