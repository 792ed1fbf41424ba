"""Rolling-origin backtests of the job-aware forecaster against the baselines on one run.

The run is split in time: the first 3/7 are the training window (origins from day 2 on, so the seasonal
features have a day behind them; targets beyond the window are hidden from the fit), the rest the test window.
Every test minute is an origin for the cheap models; every 15th minute (the common grid) is an origin for all of
them, statsforecast's included, and the main table uses the common grid. The job-aware model only sees what the
queue and the telemetry knew at each origin (see :mod:`powerplane.forecast.features`).

Also scored at 1 minute: origins where an event is announced, i.e. the queue's known ends or a job's checkpoint
rhythm or restart predict a change of at least 1 % of mean site power within the minute; there the job-aware
error is compared with persistence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.forecast import baselines
from powerplane.forecast.adapt import adapt_sequence
from powerplane.forecast.data import RunData
from powerplane.forecast.features import (
    DAY_MIN,
    FEATURES,
    MODEL_HORIZONS_MIN,
    FeatureSet,
    build_features,
    overrun_by_kind,
)
from powerplane.forecast.jobaware import NAME, Forecast, JobAwareModel, data_hash
from powerplane.forecast.metrics import score

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
EVAL_HORIZONS: dict[str, int] = {"1min": 1, "15min": 15, "1h": 60, "24h": 1440}
COMMON_STEP_MIN = 15
EVENT_SHARE = 0.01
ANNOUNCED = ("end_w", "ckpt_w", "ramp_w", "stall_w")  # what the queue, the rhythms and restarts announce


@dataclass
class Split:
    train_origins: I64
    train_end: int  # first minute of the test window
    test_origins: I64  # every minute
    common: NDArray[np.bool_]  # which test origins are on the common grid


def split(n: int) -> Split:
    """Training and test origins of an ``n``-minute run (see the module docstring)."""
    train_end = round(n * 3 / 7)
    first = min(DAY_MIN, train_end // 3)
    test = np.arange(train_end, n - 1, dtype=np.int64)
    return Split(np.arange(first, train_end - 1, dtype=np.int64), train_end, test, (test + 1) % COMMON_STEP_MIN == 0)


def subset(fs: FeatureSet, rows: NDArray[Any] | slice, horizons_min: I64 | None = None) -> FeatureSet:
    """Rows (origins) and horizons of a feature set."""
    cols = slice(None) if horizons_min is None else np.searchsorted(fs.horizons_min, horizons_min)
    return FeatureSet(
        fs.origins[rows],
        fs.horizons_min[cols],
        fs.x[rows][:, cols, :],
        fs.y[rows][:, cols],
        fs.now_w[rows],
        fs.stale_min[rows],
        fs.fallback_w[rows],
    )


def _select(fc: Forecast, rows: NDArray[Any] | slice, cols: NDArray[Any] | slice) -> Forecast:
    return Forecast(
        fc.horizons_min[cols],
        fc.p10_w[rows][:, cols],
        fc.p50_w[rows][:, cols],
        fc.p90_w[rows][:, cols],
        fc.point_w[rows][:, cols],
    )


def train_job_aware(run: RunData, sp: Split | None = None) -> tuple[JobAwareModel, FeatureSet]:
    """Fit the job-aware model on the training window of ``run``; returns it with its training features."""
    sp = sp or split(run.n)
    t0 = time.perf_counter()
    overrun = overrun_by_kind(run, run.t0_s + 60.0 * sp.train_end)
    tr = build_features(run, sp.train_origins, MODEL_HORIZONS_MIN, overrun)
    tr.y[(tr.origins[:, None] + tr.horizons_min[None, :]) >= sp.train_end] = np.nan
    model = JobAwareModel.fit(tr, overrun)
    model.meta = {
        "training_window": {
            "t0_s": run.t0_s + 60.0 * float(sp.train_origins[0]),
            "t1_s": run.t0_s + 60.0 * float(sp.train_end),
            "minutes": int(sp.train_end - sp.train_origins[0]),
            "run": run.name,
        },
        "features": list(FEATURES),
        "hyperparameters": model.hyperparameters(),
        "data_hash": data_hash(run.facility_w[: sp.train_end], run.job_power_w[run.job_minute < sp.train_end]),
        "train_s": time.perf_counter() - t0,
    }
    return model, tr


def backtest_run(run: RunData, with_statsforecast: bool = True) -> dict[str, Any]:
    """Backtest every model on one run. Returns metrics, the fitted job-aware model and the series for plots."""
    sp = split(run.n)
    model, tr = train_job_aware(run, sp)
    te = build_features(run, sp.test_origins, MODEL_HORIZONS_MIN, model.overrun_s)
    hz = np.array(list(EVAL_HORIZONS.values()), dtype=np.int64)
    cols = np.searchsorted(MODEL_HORIZONS_MIN, hz)
    ja = model.predict(te)
    tr_e, te_e = subset(tr, slice(None), hz), subset(te, slice(None), hz)
    actual = te_e.y + te_e.now_w[:, None]
    ja_e = _select(ja, slice(None), cols)
    # the band's width follows the coverage seen so far, as live (forecast/adapt.py)
    ja_e.p10_w, ja_e.p90_w = adapt_sequence(te.origins, hz, ja_e.p10_w, ja_e.p50_w, ja_e.p90_w, actual)
    forecasts: dict[str, Forecast] = {NAME: ja_e}
    forecasts.update(baselines.naive_forecasts(run, tr_e, te_e))
    forecasts["lightgbm"] = baselines.lightgbm_forecasts(run, tr_e, te_e)
    common = np.flatnonzero(sp.common)
    scale = np.nanmean(np.abs(tr_e.y), axis=0)  # persistence MAE per horizon in the training window
    metrics: dict[str, dict[str, Any]] = {}
    for name, fc in forecasts.items():
        metrics[name] = {
            label: score(actual[common, k], fc.p10_w[common, k], fc.p50_w[common, k], fc.p90_w[common, k], scale[k])
            for k, label in enumerate(EVAL_HORIZONS)
        }
    sf_time = 0.0
    if with_statsforecast:
        t0 = time.perf_counter()
        sf = baselines.statsforecast_forecasts(run, sp.train_end, subset(te_e, common))
        sf_time = time.perf_counter() - t0
        for name, fc in sf.items():
            metrics[name] = {
                label: score(actual[common, k], fc.p10_w[:, k], fc.p50_w[:, k], fc.p90_w[:, k], scale[k])
                for k, label in enumerate(EVAL_HORIZONS)
            }
            forecasts[name] = fc  # on the common grid only
    # announced events at 1 minute, every test minute
    k1 = 0
    proj = sum(te_e.x[:, k1, FEATURES.index(f)] for f in ANNOUNCED)
    mean_f = float(np.nanmean(run.facility_w))
    ev = np.abs(proj) >= EVENT_SHARE * mean_f
    ok = ev & np.isfinite(actual[:, k1])
    ja_err = np.abs(forecasts[NAME].p50_w[ok, k1] - actual[ok, k1])
    pe_err = np.abs(forecasts["persistence"].p50_w[ok, k1] - actual[ok, k1])
    events = {
        "n": int(ok.sum()),
        "job_aware_mae_w": float(ja_err.mean()) if ok.any() else None,
        "persistence_mae_w": float(pe_err.mean()) if ok.any() else None,
        "reduction_pct": float(100 * (1 - ja_err.mean() / pe_err.mean())) if ok.any() and pe_err.mean() > 0 else None,
    }
    model.meta["backtest"] = {label: metrics[NAME][label] for label in EVAL_HORIZONS}
    return {
        "run": run.name,
        "train_minutes": int(sp.train_end),
        "test_minutes": int(run.n - sp.train_end),
        "metrics": metrics,
        "events_1min": events,
        "timing_s": {"train_job_aware": model.meta["train_s"], "statsforecast": sf_time},
        "_model": model,
        "_plot": {
            "t_s": run.t0_s + 60.0 * (te_e.origins[common] + 15),
            "actual_w": actual[common, 1],
            "bands": {
                n: (
                    f.p10_w[common, 1] if f.p10_w.shape[0] != common.size else f.p10_w[:, 1],
                    f.p50_w[common, 1] if f.p50_w.shape[0] != common.size else f.p50_w[:, 1],
                    f.p90_w[common, 1] if f.p90_w.shape[0] != common.size else f.p90_w[:, 1],
                )
                for n, f in forecasts.items()
            },
        },
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over runs, per model and horizon."""
    out: dict[str, Any] = {}
    for model in results[0]["metrics"]:
        out[model] = {}
        for label in EVAL_HORIZONS:
            cells = [r["metrics"][model][label] for r in results if r["metrics"].get(model, {}).get(label, {}).get("n")]
            keys = ("mae_w", "mape_pct", "mase", "pinball_w", "coverage_p10_p90")
            out[model][label] = {
                k: float(np.mean([c[k] for c in cells if c.get(k) is not None])) if cells else None for k in keys
            }
    return out


def targets(summary: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, checked on the summary."""
    ja = summary[NAME]["15min"]
    sf = [summary[m]["15min"]["mase"] for m in ("autoets", "mstl") if m in summary and summary[m]["15min"]["mase"]]
    best_sf = min(sf) if sf else None
    red = [r["events_1min"]["reduction_pct"] for r in results if r["events_1min"]["reduction_pct"] is not None]
    return {
        "mase_15min": ja["mase"],
        "mase_15min_at_most_0_5": ja["mase"] is not None and ja["mase"] <= 0.5,
        "best_statsforecast_mase_15min": best_sf,
        "reduction_vs_best_statsforecast_pct": 100 * (1 - ja["mase"] / best_sf) if best_sf else None,
        "coverage_15min": ja["coverage_p10_p90"],
        "coverage_in_75_85": ja["coverage_p10_p90"] is not None and 0.75 <= ja["coverage_p10_p90"] <= 0.85,
        "events_1min_reduction_vs_persistence_pct": float(np.mean(red)) if red else None,
    }


def plot_bands(result: dict[str, Any], path: Path, models: tuple[str, ...] = (NAME, "mstl", "lightgbm")) -> None:
    """15-minute-ahead P10-P90 bands against the actual site power."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result["_plot"]
    t_h = (p["t_s"] - p["t_s"][0]) / 3600.0
    shown = [m for m in models if m in p["bands"]]
    fig, axes = plt.subplots(len(shown), 1, figsize=(12, 2.6 * len(shown)), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], shown, strict=True):
        lo, mid, hi = p["bands"][m]
        ax.fill_between(t_h, lo / 1e6, hi / 1e6, alpha=0.3, label=f"{m} P10-P90")
        ax.plot(t_h, mid / 1e6, lw=0.8, label=f"{m} P50")
        ax.plot(t_h, p["actual_w"] / 1e6, lw=0.6, color="k", label="actual")
        ax.set_ylabel("MW")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("hours into the test window")
    fig.suptitle(f"{result['run']}: 15-minute-ahead site facility power")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def public(result: dict[str, Any]) -> dict[str, Any]:
    """A run's result without the private fields (model object, plot series)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


__all__ = ["backtest_run", "plot_bands", "public", "replace", "split", "summarize", "targets", "train_job_aware"]
