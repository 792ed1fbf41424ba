"""Load forecasting: job-aware forecaster, baselines, rolling-origin backtests, model registry, live forecaster."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``from powerplane.forecast import LiveForecaster`` without importing the live stack with the package."""
    if name in ("LiveForecaster", "MonitoredForecaster"):
        from powerplane.forecast import live

        return getattr(live, name)
    raise AttributeError(name)
