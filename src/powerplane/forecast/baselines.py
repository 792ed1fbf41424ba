"""Baselines on the same origins and horizons as the job-aware model.

- ``persistence``: the last reading; ``seasonal-naive``: the same minute one day earlier.
  Both get conformal P10/P90 from their training-window errors per horizon.
- ``autoets``: statsforecast's AutoETS on the 1-minute series; ``mstl``: statsforecast's MSTL (daily season,
  AutoETS trend) on 5-minute means (a 1-minute daily season is 1,440 long). Fitted once on the training window,
  then rolled forward to each origin with the fitted parameters (``forward``); intervals are their own 80 %.
- ``lightgbm``: one LightGBM regressor per horizon on lags, calendar and the job features; P10/P90 conformal
  from the last fifth of the training window, held out from its fit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.forecast.data import RunData
from powerplane.forecast.features import DAY_MIN, FeatureSet, last_finite
from powerplane.forecast.jobaware import QUANTILES, Forecast

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
MSTL_STEP_MIN = 5
MIN_ROWS = 30
LGB_ROUNDS = 200
LGB_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.9,
    "seed": 0,
    "num_threads": 1,
    "verbose": -1,
}


def _conformal(point_tr: F64, y_tr: F64, point: F64) -> Forecast:
    """Quantiles from training residuals per horizon (columns)."""
    res = y_tr - point_tr
    q = np.stack(
        [
            np.nanquantile(res[:, k], QUANTILES) if np.any(np.isfinite(res[:, k])) else np.full(3, np.nan)
            for k in range(res.shape[1])
        ]
    )
    p50 = point + q[:, 1][None, :]
    return Forecast(np.zeros(0, np.int64), p50 - (q[:, 1] - q[:, 0]), p50, p50 + (q[:, 2] - q[:, 1]), point)


def _seasonal(F: F64, origins: I64, h: I64) -> F64:
    past = origins[:, None] + h[None, :] - DAY_MIN * np.ceil(h / DAY_MIN).astype(np.int64)[None, :]
    return np.where(past >= 0, F[np.clip(past, 0, F.size - 1)], np.nan)


def naive_forecasts(run: RunData, tr: FeatureSet, te: FeatureSet) -> dict[str, Forecast]:
    """Persistence and seasonal naive with conformal intervals."""
    F, _ = last_finite(run.facility_w)
    out: dict[str, Forecast] = {}
    y_tr = tr.y + tr.now_w[:, None]
    for name, fn in (
        ("persistence", lambda o: np.repeat(F[o][:, None], te.horizons_min.size, axis=1)),
        ("seasonal-naive", lambda o: _seasonal(F, o, te.horizons_min)),
    ):
        fc = _conformal(fn(tr.origins), y_tr, fn(te.origins))
        fc.horizons_min = te.horizons_min
        out[name] = fc
    return out


def _ets_models() -> tuple[Any, Any]:
    from statsforecast.models import MSTL, AutoETS

    return AutoETS(season_length=1), MSTL(season_length=DAY_MIN // MSTL_STEP_MIN, trend_forecaster=AutoETS(model="ZZN"))


def statsforecast_forecasts(run: RunData, train_end: int, te: FeatureSet) -> dict[str, Forecast]:
    """AutoETS (1-minute) and MSTL (5-minute means) fitted on ``[0, train_end)`` and rolled to each origin."""
    F, _ = last_finite(run.facility_w)
    F = np.where(np.isfinite(F), F, np.nanmean(F))
    ets, mstl = _ets_models()
    h = te.horizons_min
    hmax = int(h.max())
    o_n = te.origins.size
    res: dict[str, Forecast] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ets = ets.fit(F[:train_end])
        mean = np.full((o_n, h.size), np.nan)
        lo, hi = mean.copy(), mean.copy()
        for k, o in enumerate(te.origins):
            f = ets.forward(F[: o + 1], h=hmax, level=[80])
            mean[k], lo[k], hi[k] = f["mean"][h - 1], f["lo-80"][h - 1], f["hi-80"][h - 1]
        res["autoets"] = Forecast(h, lo, mean, hi, mean)
        step = MSTL_STEP_MIN
        F5 = F[: F.size // step * step].reshape(-1, step).mean(axis=1)
        if train_end // step < 2 * DAY_MIN // step:
            return res  # MSTL needs two daily seasons of training data
        mstl = mstl.fit(F5[: train_end // step])
        mean = np.full((o_n, h.size), np.nan)
        lo, hi = mean.copy(), mean.copy()
        for k, o in enumerate(te.origins):
            n5 = (int(o) + 1) // step  # complete 5-minute bins up to the origin
            idx = (int(o) + h) // step - n5  # bin of each target minute, 0 = the first forecast step
            f = mstl.forward(F5[:n5], h=int(idx.max()) + 1, level=[80])
            ii = np.maximum(idx, 0)
            mean[k], lo[k], hi[k] = f["mean"][ii], f["lo-80"][ii], f["hi-80"][ii]
        res["mstl"] = Forecast(h, lo, mean, hi, mean)
    return res


def lag_calendar(run: RunData, fs: FeatureSet) -> F64:
    """Lag and calendar features ``[origins, horizons, 8]`` relative to the last reading."""
    F, _ = last_finite(run.facility_w)
    o, h = fs.origins, fs.horizons_min
    now = F[o][:, None]

    def lag(k: int) -> F64:
        return np.repeat((F[np.maximum(o - k, 0)][:, None] - now), h.size, axis=1)

    season = _seasonal(F, o, h) - now
    tod = ((run.t0_s + 60.0 * (o[:, None] + h[None, :])) % 86400.0) / 86400.0 * 2 * np.pi
    dow = np.floor(((run.t0_s + 60.0 * (o[:, None] + h[None, :])) / 86400.0 + 3) % 7)
    return np.stack(
        [
            np.broadcast_to(now, season.shape),
            lag(1),
            lag(5),
            lag(15),
            lag(60),
            season,
            np.sin(tod) + 0 * season,
            np.cos(tod) + dow * 0.0,
        ],
        axis=2,
    )


def lightgbm_forecasts(run: RunData, tr: FeatureSet, te: FeatureSet) -> Forecast:
    """LightGBM per horizon on lag, calendar and job features, conformal intervals from a held-out fifth."""
    import lightgbm as lgb

    Xtr = np.concatenate([lag_calendar(run, tr), tr.x], axis=2)
    Xte = np.concatenate([lag_calendar(run, te), te.x], axis=2)
    h = te.horizons_min
    pt = np.full((te.origins.size, h.size), np.nan)
    lo, hi = pt.copy(), pt.copy()
    hidx = np.searchsorted(tr.horizons_min, h)
    for k, kt in enumerate(hidx):
        y = tr.y[:, kt]
        ok = np.flatnonzero(np.isfinite(y))
        if ok.size < MIN_ROWS:
            continue  # no horizon this long fits in the training window: left NaN (not scored)
        cut = int(ok.size * 0.8)
        fit_i, cal_i = ok[:cut], ok[cut:]
        model = lgb.train(LGB_PARAMS, lgb.Dataset(Xtr[fit_i, kt, :], y[fit_i]), num_boost_round=LGB_ROUNDS)
        res = y[cal_i] - np.asarray(model.predict(Xtr[cal_i, kt, :]))
        q = np.quantile(res, QUANTILES) if res.size else np.zeros(3)
        # refit on the whole window for the point forecast; keep the held-out spread
        model = lgb.train(LGB_PARAMS, lgb.Dataset(Xtr[ok, kt, :], y[ok]), num_boost_round=LGB_ROUNDS)
        p = te.now_w + np.asarray(model.predict(Xte[:, k, :]))
        pt[:, k] = p + q[1]
        lo[:, k] = p + q[0]
        hi[:, k] = p + q[2]
    return Forecast(h, lo, pt, hi, pt)
