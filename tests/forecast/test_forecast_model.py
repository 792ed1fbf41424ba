"""Features, the job-aware model and the metrics on a synthetic run with exact structure."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.forecast.backtest import split, subset
from powerplane.forecast.data import JobInfo, RunData, minute_means
from powerplane.forecast.features import MODEL_HORIZONS_MIN, build_features
from powerplane.forecast.jobaware import JobAwareModel
from powerplane.forecast.metrics import score


def synthetic_run(n: int = 3000, seed: int = 0) -> RunData:
    """Base load with noise, one long job checkpointing every 20 minutes, and short jobs with declared ends."""
    rng = np.random.default_rng(seed)
    t0 = 1.7e9
    minutes, ids, power = [], [], []
    n_short = n // 30
    starts = np.sort(rng.integers(5, n - 5, n_short))  # unannounced arrivals at random
    durs = rng.integers(8, 20, n_short)
    for m in range(n):
        minutes.append(m)
        ids.append(0)
        power.append(300e3 if m % 20 == 7 else 1000e3)
        for k in np.flatnonzero((starts <= m) & (m < starts + durs)):
            minutes.append(m)
            ids.append(int(k) + 1)
            power.append(200e3)
    minutes_a, ids_a, power_a = np.array(minutes), np.array(ids), np.array(power)
    jobs_p = np.bincount(minutes_a, weights=power_a, minlength=n)
    facility = 500e3 + 1.3 * jobs_p + rng.normal(0, 5e3, n)
    nj = n_short + 1
    start_s = t0 + 60.0 * np.r_[0, starts]
    jobs = JobInfo(
        kind=np.r_[0, np.full(n_short, 3)],
        n_gpus=np.r_[512, np.full(n_short, 64)],
        submit_s=start_s.copy(),
        start_s=start_s,
        end_s=np.r_[np.nan, t0 + 60.0 * (starts + durs)],
        work_s=np.r_[np.inf, 60.0 * durs],
    )
    assert jobs.n == nj
    return RunData(
        "synthetic", t0, facility, facility / 1.2, facility * 0.1, np.full(n, 25.0), jobs, minutes_a, ids_a, power_a
    )


def test_job_aware_beats_persistence_on_known_ends_and_checkpoints() -> None:
    run = synthetic_run(6000)
    sp = split(run.n)
    tr = build_features(run, sp.train_origins)
    tr.y[(tr.origins[:, None] + tr.horizons_min[None, :]) >= sp.train_end] = np.nan
    model = JobAwareModel.fit(tr, np.zeros(4))
    te = build_features(run, sp.test_origins)
    fc = model.predict(te)
    for h, limit in ((1, 0.3), (15, 0.65)):
        k = int(np.searchsorted(MODEL_HORIZONS_MIN, h))
        actual = te.y[:, k] + te.now_w
        ok = np.isfinite(actual)
        mae = np.mean(np.abs(fc.p50_w[ok, k] - actual[ok]))
        pers = np.mean(np.abs(te.y[ok, k]))
        assert mae < limit * pers, (h, mae, pers)
        cov = np.mean((actual[ok] >= fc.p10_w[ok, k]) & (actual[ok] <= fc.p90_w[ok, k]))
        assert 0.6 <= cov <= 0.97  # skewed arrival noise: conformal bands stay near, not at, 80 %
    # round trip through bytes
    again = JobAwareModel.from_bytes(model.to_bytes())
    assert np.allclose(again.predict(subset(te, slice(0, 5))).p50_w, model.predict(subset(te, slice(0, 5))).p50_w)


def test_fallback_and_stale_inputs_widen_the_band() -> None:
    run = synthetic_run(2000)
    sp = split(run.n)
    tr = build_features(run, sp.train_origins)
    model = JobAwareModel.fit(tr, np.zeros(4))
    te = subset(build_features(run, sp.test_origins[:10]), slice(None))
    base = model.predict(te)
    te.fallback_w[:] = 1e5
    te.stale_min[:] = 5.0
    wide = model.predict(te)
    assert np.all(wide.p90_w - wide.p10_w > base.p90_w - base.p10_w)
    assert np.allclose(wide.p50_w, base.p50_w)  # the point stays, only the band widens
    assert np.all(np.isfinite(wide.p50_w[:, :60])) and np.all(wide.p50_w[:, :60] > 0)


def test_gaps_are_nan_not_zero() -> None:
    m = minute_means(np.array([0.0, 10.0, 130.0]), np.array([1.0, np.nan, 2.0]), 0.0, 3)
    assert m[0] == 1.0 and np.isnan(m[1]) and m[2] == 2.0


def test_score_exact() -> None:
    y = np.array([10.0, 20.0, np.nan])
    s = score(y, np.array([5.0, 25.0, 0.0]), np.array([10.0, 22.0, 0.0]), np.array([15.0, 30.0, 0.0]), 4.0)
    assert s["n"] == 2 and s["mae_w"] == 1.0 and s["mase"] == 0.25 and s["coverage_p10_p90"] == 0.5
    assert np.isclose(s["mape_pct"], 5.0)


def test_a_jobs_progress_gives_its_end_where_its_declared_work_cannot() -> None:
    """A job warm-started before the run (its declared work counts from a start the run never saw) ends at minute
    100; the work it has left, recorded each minute, says so; the declared work alone expects it hours later."""
    n, t0, end = 160, 1.7e9, 100
    minutes = np.arange(end)
    run = RunData(
        "warm",
        t0,
        np.full(n, 2e6),
        np.full(n, 1.6e6),
        np.full(n, 0.2e6),
        np.full(n, 25.0),
        JobInfo(
            kind=np.array([0]),
            n_gpus=np.array([512]),
            submit_s=np.array([t0]),
            start_s=np.array([t0]),
            end_s=np.array([t0 + 60.0 * end]),
            work_s=np.array([60.0 * 600]),  # the whole job's work: it would end at minute 600
        ),
        minutes,
        np.zeros(end, np.int64),
        np.full(end, 1e6),
        # progress as the twin's scheduler knows it: a few minutes lost to a restart at minute 40 (work left grows)
        60.0 * (end - 1.0 - minutes) + np.where(minutes >= 40, 0.0, -180.0),
    )
    k = int(np.searchsorted(MODEL_HORIZONS_MIN, 15))
    fs = build_features(run, np.array([80, 90]))
    # at minute 80 the job has 19 minutes left (ends after h = 15), at minute 90 nine: the end feature removes it
    assert fs.x[0, k, 0] == 0.0
    assert fs.x[1, k, 0] == pytest.approx(-1e6)
    run.job_work_left_s = None  # a run from before the column: the declared work puts the end at minute 600
    old = build_features(run, np.array([80, 90]))
    assert old.x[1, k, 0] == 0.0


def test_job_power_coefficients_stay_physical_where_a_feature_barely_moved() -> None:
    from powerplane.forecast.features import FEATURES
    from powerplane.forecast.jobaware import JOB_COEF_MAX

    # y = 1.4 x end + noise; "queued_w" moves in 5 of 2,000 rows, each time with the noise against it: a free fit
    # gives it a large negative coefficient, which a live queue of known starts would turn into a negative forecast.
    rng = np.random.default_rng(3)
    n = 2000
    X = np.zeros((n, len(FEATURES)))
    end, queued = FEATURES.index("end_w"), FEATURES.index("queued_w")
    X[:, end] = rng.normal(0, 1e6, n)
    y = 1.4 * X[:, end] + rng.normal(0, 1e5, n)
    rare = rng.choice(n, 5, replace=False)
    X[rare, queued] = 1e4
    y[rare] -= 5e5
    free, _ = JobAwareModel._solve(X, y, 1e-3)
    assert free[queued] < -5.0  # the unbounded fit chases the five rows
    coef, _ = JobAwareModel._solve_bounded(X, y, 1e-3)
    assert 0.0 <= coef[queued] <= JOB_COEF_MAX
    assert coef[end] == pytest.approx(1.4, rel=0.02)  # the rest refitted, unharmed
