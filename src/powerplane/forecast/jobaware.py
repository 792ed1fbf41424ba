"""The job-aware forecaster: learned job profiles and the queue's known ends and checkpoints, per horizon.

For each horizon ``h`` a linear model maps the job-aware features (:mod:`powerplane.forecast.features`) to the
change of facility power: ``F(i + h) = F(i) + b_h . x_h + a_h``, fitted by least absolute deviations on the
training origins (a little ridge keeps rare features sane). Quantiles are conformal: the P10/P50/P90 of the training
residuals per horizon, so P10-P90 covers ~80 % where the future looks like the training window.

Intervals widen explicitly where the inputs are weak: by the power of jobs forecast from a fallback profile
(unknown kind or size) and by the age of the last reading when telemetry is stale (a gap), never by
forecasting zero.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.forecast.features import FEATURES, FeatureSet

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

NAME = "job-aware"
RIDGE = 1e-3  # relative to each feature's variance
# Features that are job power [W] (an end, a checkpoint, a ramp, a queued start, a stall, a service's swing): their
# coefficient is facility watts per job watt, PUE and node overheads on top, so within [0, JOB_COEF_MAX]. A fit on
# a window where one of them barely moved (queued starts in a run that kept no queue: 7 kW of spread) can give it
# any value (-37 at 1 h on texas), which the live forecaster then multiplies by the scheduler's 0.8 MW of known
# starts: a forecast of -13.7 MW. Those coefficients are held at the nearest bound and the others refitted.
JOB_POWER_FEATURES = ("end_w", "ckpt_w", "ramp_w", "queued_w", "stall_w", "service_w")
JOB_COEF_MAX = 3.0
_BOUNDED = np.isin(np.array(FEATURES), JOB_POWER_FEATURES)  # which of FEATURES' columns are bounded
IRLS_ITERS = 12  # reweighting rounds of the least-absolute-deviation fit
CALIB_FOLDS = 4  # blocks of the blocked cross-validation that calibrates the quantiles
LONG_HORIZON_MIN = 720  # horizons from here on also use the statistical features
QUANTILES = (0.1, 0.5, 0.9)
FALLBACK_WIDEN = 0.5  # extra half-width per W of job power forecast from a fallback profile
STALE_WIDEN = 0.5  # extra half-width per minute of staleness, as a share of the 1-minute half-width


def min_fit_rows(n_features: int = len(FEATURES)) -> int:
    """Training origins a horizon needs before it is fitted (fewer: the horizon is left unfitted, NaN)."""
    return 4 * (n_features + 5)


def horizon_mask(h_min: int) -> F64:
    """Which features a horizon uses (1/0): below ``LONG_HORIZON_MIN`` only what the queue and the telemetry know
    about the jobs running now, plus cooling; the statistical ones (arrivals, mean reversion, seasonal change)
    only for long horizons, where the jobs running now have mostly ended (at short horizons they fitted the
    training window's noise and did not carry over to the test window on qingyang)."""
    m = np.ones(len(FEATURES))
    if h_min < LONG_HORIZON_MIN:
        for f in ("arrivals_w", "arrival_rate_w", "revert_w", "seasonal_w"):
            m[FEATURES.index(f)] = 0.0
    return m


@dataclass
class Forecast:
    """Quantile forecasts ``[origins, horizons]`` of facility power [W]."""

    horizons_min: I64
    p10_w: F64
    p50_w: F64
    p90_w: F64
    point_w: F64


@dataclass
class JobAwareModel:
    """Per-horizon coefficients, intercepts, residual quantiles and scales (see the module docstring)."""

    horizons_min: I64
    coef: F64  # [H, F]
    intercept: F64  # [H]
    resid_q: F64  # [H, 3] residual P10, P50, P90
    overrun_s: F64  # per kind, used to build the features
    features: tuple[str, ...] = FEATURES
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _solve_bounded(X: F64, y: F64, ridge: float) -> tuple[F64, float]:
        """:meth:`_solve` with the job-power coefficients within [0, JOB_COEF_MAX] (see JOB_POWER_FEATURES): any
        outside are fixed at their bound, their part taken off the target, and the rest solved again (twice at
        most: a fixed coefficient can push another out)."""
        coef, icpt = JobAwareModel._solve(X, y, ridge)
        fixed = np.zeros(X.shape[1], dtype=bool)
        for _ in range(2):
            out = _BOUNDED & ~fixed & ((coef < 0.0) | (coef > JOB_COEF_MAX))
            if not out.any():
                break
            fixed |= out
            coef = np.where(fixed, np.clip(coef, 0.0, JOB_COEF_MAX), coef)
            free = ~fixed
            c_free, icpt = JobAwareModel._solve(X[:, free], y - X[:, fixed] @ coef[fixed], ridge)
            coef[free] = c_free
        return coef, icpt

    @staticmethod
    def _solve(X: F64, y: F64, ridge: float, iters: int = IRLS_ITERS) -> tuple[F64, float]:
        """Least absolute deviations (the median, which MAE rewards) by iteratively reweighted ridge least
        squares; stalls and unannounced arrivals make the errors heavy-tailed, which plain least squares chases."""
        mu = X.mean(axis=0)
        sd = X.std(axis=0)
        use = sd > 0
        Z = np.concatenate([(X[:, use] - mu[use]) / sd[use], np.ones((y.size, 1))], axis=1)
        reg = ridge * y.size * np.eye(Z.shape[1])
        reg[-1, -1] = 0.0
        wts = np.ones(y.size)
        scale = float(np.std(y)) or 1.0
        for _ in range(iters):
            A = (Z * wts[:, None]).T @ Z + reg
            w = np.linalg.solve(A, (Z * wts[:, None]).T @ y)
            r = np.abs(y - Z @ w)
            wts = 1.0 / np.maximum(r, 1e-3 * scale)
            wts /= wts.mean()  # keep the ridge term on the same footing every round
        coef = np.zeros(X.shape[1])
        coef[use] = w[:-1] / sd[use]
        return coef, float(w[-1] - coef @ mu)

    @staticmethod
    def fit(fs: FeatureSet, overrun_s: F64, ridge: float = RIDGE, folds: int = CALIB_FOLDS) -> JobAwareModel:
        """Least absolute deviations per horizon on every origin; residual quantiles from blocked cross-validation
        (each contiguous block of origins scored by a fit on the others), so the bands are calibrated on the
        whole training window without scoring a model on its own fit."""
        h = fs.horizons_min
        nf = fs.x.shape[2]
        coef = np.zeros((h.size, nf))
        icpt = np.zeros(h.size)
        rq = np.full((h.size, 3), np.nan)  # NaN: a horizon the training window could not fit
        for k in range(h.size):
            y = fs.y[:, k]
            ok = np.flatnonzero(np.isfinite(y) & (fs.stale_min == 0))
            if ok.size < min_fit_rows(nf):
                continue
            X = fs.x[:, k, :] * horizon_mask(int(h[k]))[None, :]
            res = []
            for block in np.array_split(ok, folds):
                rest = np.setdiff1d(ok, block, assume_unique=True)
                c, b = JobAwareModel._solve_bounded(X[rest], y[rest], ridge)
                res.append(y[block] - (X[block] @ c + b))
            rq[k] = np.quantile(np.concatenate(res), QUANTILES)
            coef[k], icpt[k] = JobAwareModel._solve_bounded(X[ok], y[ok], ridge)
        return JobAwareModel(h, coef, icpt, rq, np.asarray(overrun_s, np.float64))

    def predict(self, fs: FeatureSet) -> Forecast:
        idx = np.searchsorted(self.horizons_min, fs.horizons_min)
        if np.any(self.horizons_min[np.minimum(idx, self.horizons_min.size - 1)] != fs.horizons_min):
            raise ValueError(f"model has no horizons {sorted(set(fs.horizons_min) - set(self.horizons_min))}")
        coef, icpt, rq = self.coef[idx], self.intercept[idx], self.resid_q[idx]
        delta = np.einsum("ohf,hf->oh", fs.x, coef) + icpt[None, :]
        # horizons without a fit are NaN (not forecast), never a made-up number
        delta = np.where(np.isfinite(rq[:, 1])[None, :], delta, np.nan)
        point = fs.now_w[:, None] + delta
        # the fit is a median already: P50 is the point; the held-out residuals place P10 and P90 around it
        lo_w = np.maximum(-rq[:, 0], 0.0)[None, :]
        hi_w = np.maximum(rq[:, 2], 0.0)[None, :]
        widen = FALLBACK_WIDEN * fs.fallback_w[:, None]
        stale = np.nan_to_num(fs.stale_min, nan=0.0)[:, None]
        widen = widen + STALE_WIDEN * stale * 0.5 * np.nan_to_num(self.resid_q[0, 2] - self.resid_q[0, 0])
        p50 = point
        return Forecast(fs.horizons_min, p50 - lo_w - widen, p50, p50 + hi_w + widen, point)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "horizons_min": self.horizons_min.tolist(),
                "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(),
                "resid_q": [[float(v) if np.isfinite(v) else None for v in row] for row in self.resid_q],
                "overrun_s": self.overrun_s.tolist(),
                "features": list(self.features),
                "meta": self.meta,
            }
        ).encode()

    @staticmethod
    def from_bytes(blob: bytes) -> JobAwareModel:
        d = json.loads(blob)
        if tuple(d["features"]) != FEATURES:
            raise ValueError(f"model features {d['features']} do not match this code's {list(FEATURES)}")
        return JobAwareModel(
            horizons_min=np.asarray(d["horizons_min"], np.int64),
            coef=np.asarray(d["coef"], np.float64),
            intercept=np.asarray(d["intercept"], np.float64),
            resid_q=np.array([[np.nan if v is None else v for v in row] for row in d["resid_q"]], np.float64),
            overrun_s=np.asarray(d["overrun_s"], np.float64),
            meta=d.get("meta", {}),
        )

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "ridge": RIDGE,
            "calib_folds": CALIB_FOLDS,
            "irls_iters": IRLS_ITERS,
            "long_horizon_min": LONG_HORIZON_MIN,
            "quantiles": list(QUANTILES),
            "fallback_widen": FALLBACK_WIDEN,
            "stale_widen": STALE_WIDEN,
        }


def data_hash(*arrays: NDArray[Any]) -> str:
    """Short SHA-256 of the training data's bytes."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
