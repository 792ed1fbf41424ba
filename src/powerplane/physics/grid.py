"""Grid frequency: an Ornstein-Uhlenbeck wander around nominal plus occasional under-frequency events.

Between events the frequency deviation ``x`` follows ``dx = -x/tau dt + sigma sqrt(2/tau) dW`` so that its
stationary standard deviation is ``sigma`` (typical interconnections hold ~0.01-0.03 Hz). An event (loss of a large
generator) drops the frequency by ``depth`` within a second and it recovers exponentially over ~``recovery_s``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.signal import lfilter


def ou_block(
    x0: float, n_steps: int, dt_s: float, sigma: float, tau_s: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``n_steps`` samples of an exact-discretized Ornstein-Uhlenbeck process starting after ``x0``."""
    a = float(np.exp(-dt_s / tau_s))
    noise = rng.standard_normal(n_steps) * sigma * np.sqrt(1.0 - a * a)
    out, _ = lfilter([1.0], [1.0, -a], noise, zi=np.array([a * x0]))
    return np.asarray(out, dtype=np.float64)


def event_profile(
    t_s: NDArray[np.float64], event_t_s: NDArray[np.float64], depth_hz: float, recovery_s: float
) -> NDArray:
    """Frequency deviation [Hz] caused by events starting at ``event_t_s``: a 1-second fall then an exponential
    recovery. Summed over events (they rarely overlap)."""
    out = np.zeros_like(t_s)
    for te in event_t_s:
        since = t_s - te
        active = since >= 0
        if not active.any():
            continue
        fall = np.clip(since[active], 0.0, 1.0)
        out[active] -= depth_hz * fall * np.exp(-np.maximum(since[active] - 1.0, 0.0) / recovery_s)
    return out
