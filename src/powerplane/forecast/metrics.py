"""Forecast error metrics over origins: MAE, MAPE, MASE, pinball loss and P10-P90 coverage.

MASE divides the MAE by the training window's MAE of persistence *at the same horizon* (Hyndman's scaled error
with an h-step naive scale), so 1.0 is "as good as the last reading" at every horizon.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def pinball(y: F64, q_pred: F64, q: float) -> float:
    """Mean pinball (quantile) loss of ``q_pred`` for quantile ``q``.

    >>> pinball(np.array([1.0, 3.0]), np.array([2.0, 2.0]), 0.9)
    0.5
    """
    d = y - q_pred
    return float(np.mean(np.maximum(q * d, (q - 1) * d)))


def score(y: F64, p10: F64, p50: F64, p90: F64, scale_w: float) -> dict[str, Any]:
    """Metrics of one model at one horizon; rows where the actual or the forecast is unknown are left out."""
    ok = np.isfinite(y) & np.isfinite(p50) & np.isfinite(p10) & np.isfinite(p90)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0}
    y, p10, p50, p90 = y[ok], p10[ok], p50[ok], p90[ok]
    err = np.abs(p50 - y)
    mae = float(err.mean())
    nz = np.abs(y) > 0
    return {
        "n": n,
        "mae_w": mae,
        "mape_pct": float(100.0 * np.mean(err[nz] / np.abs(y[nz]))) if np.any(nz) else None,
        "mase": mae / scale_w if scale_w > 0 else None,
        "pinball_w": float(np.mean([pinball(y, p10, 0.1), pinball(y, p50, 0.5), pinball(y, p90, 0.9)])),
        "coverage_p10_p90": float(np.mean((y >= p10) & (y <= p90))),
    }
