"""Load forecasting: job-aware forecaster, baselines, rolling-origin backtests, model registry, live forecaster."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``from powerplane.forecast import LiveForecaster`` without importing the live stack with the package."""
    if name == "LiveForecaster":
        from powerplane.forecast.live import LiveForecaster

        return LiveForecaster
    if name == "MonitoredForecaster":
        from powerplane.forecast.monitor import MonitoredForecaster

        return MonitoredForecaster
    raise AttributeError(name)
