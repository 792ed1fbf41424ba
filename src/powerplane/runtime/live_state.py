"""What the live runtime publishes each cycle: one immutable :class:`LiveState`, plus the small helpers that keep
the series the cockpit draws (a bounded ring of site readings) and the money spent and saved today.

The API reads only these objects; it never touches the twin, the tracker or the policy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.telemetry.snapshot import Snapshot

F64 = NDArray[np.float64]

SITE_SERIES = (
    "grid_power_w",
    "facility_power_w",
    "it_power_w",
    "cooling_power_w",
    "renewable_power_w",
    "bess_power_w",
    "price_per_kwh",
    "demand_15min_w",
    "pue",
    "bess_soc_mean",
)


class SeriesRing:
    """The last ``capacity`` cycles of the site's readings (one row per cycle), thread-safe, bounded memory."""

    def __init__(self, names: tuple[str, ...], capacity: int = 3600) -> None:
        self.names = names
        self.capacity = capacity
        self._t = np.full(capacity, np.nan)
        self._v = np.full((capacity, len(names)), np.nan)
        self._next = 0
        self.size = 0
        self._lock = threading.Lock()

    def push(self, t_s: float, values: dict[str, float]) -> None:
        row = np.array([values.get(n, np.nan) for n in self.names], dtype=np.float64)
        with self._lock:
            self._t[self._next] = t_s
            self._v[self._next] = row
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def tail(self, since_s: float = -np.inf, max_points: int = 720) -> dict[str, list[float | None]]:
        """Rows newer than ``since_s`` in time order, thinned to at most ``max_points`` (every k-th row)."""
        with self._lock:
            start = (self._next - self.size) % self.capacity
            order = (start + np.arange(self.size)) % self.capacity
            t = self._t[order]
            v = self._v[order]
        keep = t > since_s
        t, v = t[keep], v[keep]
        if t.size > max_points:
            k = int(np.ceil(t.size / max_points))
            t, v = t[::-k][::-1], v[::-k][::-1]
        out: dict[str, list[float | None]] = {"t_s": t.tolist()}
        for i, n in enumerate(self.names):
            col = v[:, i]
            out[n] = [None if not np.isfinite(x) else round(float(x), 4) for x in col]
        return out


@dataclass
class Ledger:
    """Money of the current local day: energy bought at the tariff's price, and what the batteries saved against
    drawing the same load from the grid (energy only: the demand charge is billed monthly, shown apart)."""

    day: int = -1
    spent: float = 0.0
    saved: float = 0.0
    energy_mwh: float = 0.0

    def add(self, day: int, grid_w: F64, bess_w: F64, price: F64, export_price: float, dt_s: float) -> None:
        if day != self.day:
            self.day, self.spent, self.saved, self.energy_mwh = day, 0.0, 0.0, 0.0
        kwh = dt_s / 3.6e6

        def cost(x: F64) -> float:
            return float((np.maximum(x, 0.0) @ price) - np.maximum(-x, 0.0).sum() * export_price) * kwh

        paid = cost(grid_w)
        self.spent += paid
        # Without batteries the grid would carry grid + bess (bess > 0 discharging, < 0 charging).
        self.saved += cost(grid_w + bess_w) - paid
        self.energy_mwh += float(np.maximum(grid_w, 0.0).sum()) * dt_s / 3.6e9


@dataclass(frozen=True)
class CycleInfo:
    cycles: int
    cycle_ms: float
    cycle_ms_p95: float
    lag_s: float
    period_s: float
    speed: float
    steps_per_cycle: int
    errors: int
    last_error: str


@dataclass(frozen=True)
class LiveState:
    """Everything the cockpit shows about one cycle. Never mutated once published."""

    version: int
    t_s: float
    scenario: str
    policy: str
    currency: str
    timezone: str
    snapshot: Snapshot
    site: dict[str, Any]
    money: dict[str, Any]
    prices: dict[str, list[float]]
    bess: list[dict[str, Any]]
    plan: dict[str, Any] | None
    dr: dict[str, Any]
    jobs: dict[str, NDArray[Any]]
    job_names: list[str]
    job_caps_w: dict[int, float]
    alerts: list[dict[str, Any]] | None
    alert_status: str
    forecast: dict[str, Any] | None
    forecast_status: str
    cycle: CycleInfo
    audit_count: int
    extra: dict[str, Any] = field(default_factory=dict)
    # P10/P50/P90 per rack (and P50 per hall) at 10 s, 1 min, 15 min, 1 h, 24 h, computed with the site forecast
    # (LiveForecaster.forecast_racks); served by GET /api/forecast/racks, not streamed
    forecast_racks: dict[str, Any] | None = None
