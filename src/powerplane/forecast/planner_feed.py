"""The champion's forecast in the shape the MPC planner takes: IT load per planner slot, P50 and P90.

The planner (``runtime/energy.py``) plans on IT load per slot (it adds cooling and overheads from the weather
itself); the forecaster gives site facility power at 1-minute steps for the next hour. :func:`planner_it_load`
averages the forecast over each slot, holds its last value for slots past the hour, and converts facility to IT
with the site's current IT share. P50 is the load to plan on; ``p90 - p50`` is the headroom to keep under the
contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def planner_it_load(
    forecast: Mapping[str, Any], slot_start_s: F64, slot_s: float, facility_now_w: float, it_now_w: float
) -> tuple[F64, F64] | None:
    """IT load [W] per planner slot (P50, P90) from a :meth:`LiveForecaster.forecast` dict; None without one.

    >>> fc = {"t_s": [60.0, 120.0, 180.0], "p50_w": [100.0, 120.0, 140.0], "p90_w": [110.0, 130.0, 150.0]}
    >>> p50, p90 = planner_it_load(fc, np.array([0.0, 120.0, 3600.0]), 120.0, 200.0, 100.0)
    >>> p50.tolist(), p90.tolist()
    ([55.0, 70.0, 70.0], [60.0, 75.0, 75.0])
    """
    t = np.asarray(forecast.get("t_s", []), np.float64)
    if t.size == 0 or not (facility_now_w > 0 and np.isfinite(it_now_w)):
        return None
    share = it_now_w / facility_now_w
    out = []
    for key in ("p50_w", "p90_w"):
        v = np.asarray(forecast[key], np.float64) * share
        starts = np.asarray(slot_start_s, np.float64)
        # minutes of the forecast inside each slot [start, start + slot_s]; none: the last value (held)
        inside = (t[None, :] > starts[:, None]) & (t[None, :] <= starts[:, None] + slot_s)
        n = inside.sum(axis=1)
        mean = np.where(n > 0, (inside * v[None, :]).sum(axis=1) / np.maximum(n, 1), v[-1])
        out.append(np.asarray(mean, np.float64))
    return out[0], out[1]
