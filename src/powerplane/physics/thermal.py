"""Temperatures as first-order lags: GPU die over rack inlet, rack inlet over cooling supply.

A first-order lag ``tau dy/dt = x - y`` sampled every ``dt`` with the input held over each step is
``y[k+1] = a y[k] + (1 - a) x[k]`` with ``a = exp(-dt / tau)``. Over a block of ``T`` steps the end value is
``a^T y0 + (1 - a) sum_k a^(T-1-k) x[k]``: one weighted sum over the block, so a block of 10,240 GPU temperatures
advances with a single matrix-vector product instead of T passes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def lag_coefficient(dt_s: float, tau_s: float) -> float:
    """Per-step retention ``a = exp(-dt / tau)`` of a first-order lag [-]."""
    return float(np.exp(-dt_s / tau_s))


def lag_weights(n_steps: int, a: float) -> NDArray[np.float64]:
    """Weights ``(1 - a) a^(T-1-k)`` of each step's input in the end value of a block of ``n_steps``."""
    return (1.0 - a) * a ** np.arange(n_steps - 1, -1, -1, dtype=np.float64)


def lag_block_end(y0: NDArray, x_block: NDArray, a: float) -> NDArray:
    """End value of a first-order lag after a block of inputs ``x_block`` [T, ...] starting from ``y0`` [...].

    >>> float(lag_block_end(np.array(0.0), np.ones(1000), 0.9).round(6))
    1.0
    """
    n = x_block.shape[0]
    w = lag_weights(n, a).astype(x_block.dtype, copy=False)
    return np.asarray(a**n * y0 + np.tensordot(w, x_block, axes=(0, 0)))


def die_temperature_c(inlet_c: ArrayLike, power_w: ArrayLike, resistance_c_per_w: ArrayLike) -> NDArray:
    """Steady-state GPU die temperature [C] = inlet [C] + thermal resistance [C/W] x board power [W]."""
    return np.asarray(np.asarray(inlet_c) + np.asarray(resistance_c_per_w) * np.asarray(power_w))


def rack_inlet_c(
    supply_c: ArrayLike,
    rack_load_share: ArrayLike,
    recirculation_c: float = 3.0,
    failure_rise_c: ArrayLike = 0.0,
) -> NDArray:
    """Steady-state rack inlet temperature [C]: cooling supply plus hot-air recirculation growing with the rack's
    load (0..1 of its peak) plus the rise when the cooling unit serving the rack has failed."""
    return np.asarray(
        np.asarray(supply_c)
        + recirculation_c * np.clip(np.asarray(rack_load_share), 0.0, 1.5)
        + np.asarray(failure_rise_c)
    )
