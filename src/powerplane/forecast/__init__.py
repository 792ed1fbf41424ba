"""Load forecasting: job-aware forecaster, baselines, rolling-origin backtests, model registry, live forecaster."""
