"""Job-aware features at forecast origins, built by replaying a run minute by minute (only the past is used).

At an origin (minute ``i``) and horizon ``h`` the features describe what the queue and the telemetry know at
``i`` about the change ``F(i + h) - F(i)`` of facility power ``F``:

- ``end_w``, ``end_gpus``: power and GPUs of running jobs whose expected end falls before ``i + h``: the work
  they have left at ``i`` (their progress, as the scheduler knows it, when the run recorded it) or else start +
  declared work + the median overrun of their kind among jobs already finished;
- ``ckpt_w``: checkpoint dips due at ``i + h`` (from each job's observed rhythm), and current dips recovering;
  ``level_w``: steady jobs returning from this minute's power to their level (short noise);
- ``stall_w``: stalled jobs (a fault) coming back: flat for the rest of a learned restart delay, then the
  restart ramp to their level;
- ``service_w``: the inference services' change, from their summed power a whole number of learned periods
  earlier (the arrival traces behind them repeat);
- ``ramp_w``: young jobs reaching their class profile;
- ``queued_w``: profile power of jobs submitted but not started (the queue);
- ``arrivals_w``: profile power of jobs that arrived over the same clock window yesterday, and ``arrival_rate_w``
  the last day's mean arrival power times ``h`` (jobs not yet submitted are unknown, so only their rate is);
- ``cooling_w``: IT power times the outdoor temperature change (the weather forecast) and ``revert_w``: the
  last minute's distance from the last 15 minutes' mean (cooling lags and short swings);
- ``seasonal_w``: ``F(i + h - 1440) - F(i)``, the seasonal-naive change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from powerplane.forecast.data import STEP_S, RunData
from powerplane.forecast.jobstate import N_GPU_BUCKETS, JobState, Projection, gpu_bucket

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

FEATURES = (
    "end_w",
    "end_gpus",
    "ckpt_w",
    "ramp_w",
    "queued_w",
    "arrivals_w",
    "arrival_rate_w",
    "cooling_w",
    "revert_w",
    "seasonal_w",
    "level_w",
    "stall_w",
    "service_w",
)
MODEL_HORIZONS_MIN = np.array([*range(1, 61), 1440], dtype=np.int64)
DAY_MIN = 1440


@dataclass
class FeatureSet:
    """``x[o, h, f]`` features, ``y[o, h]`` targets (change of facility power, NaN unknown) at ``origins``."""

    origins: I64
    horizons_min: I64
    x: F64
    y: F64
    now_w: F64  # facility power at the origin (last finite value: a gap carries the last reading, flagged)
    stale_min: F64  # minutes since that last finite reading
    fallback_w: F64  # job power forecast from fallback profiles at the origin


def last_finite(x: F64) -> tuple[F64, F64]:
    """Forward-filled series and the age (steps) of each filled value; NaN before the first finite value.

    >>> v, age = last_finite(np.array([np.nan, 1.0, np.nan, np.nan, 2.0]))
    >>> v.tolist()[1:], age.tolist()[1:]
    ([1.0, 1.0, 1.0, 2.0], [0.0, 1.0, 2.0, 0.0])
    """
    n = x.size
    ok = np.isfinite(x)
    idx = np.where(ok, np.arange(n), -1)
    idx = np.maximum.accumulate(idx)
    filled = np.where(idx >= 0, x[np.maximum(idx, 0)], np.nan)
    age = np.where(idx >= 0, np.arange(n) - idx, np.nan).astype(np.float64)
    return filled, age


def overrun_by_kind(run: RunData, until_s: float, n_kinds: int = 4) -> F64:
    """Median (realized duration - declared work) [s] per kind among jobs that finished before ``until_s``."""
    j = run.jobs
    dur = j.end_s - j.start_s
    out = np.zeros(n_kinds)
    done = np.isfinite(dur) & np.isfinite(j.work_s) & (j.end_s < until_s)
    for k in range(n_kinds):
        m = done & (j.kind == k)
        if np.any(m):
            out[k] = float(np.median(dur[m] - j.work_s[m]))
    return out


def origin_features(
    out: F64, state: JobState, i: int, h: I64, F: F64, it: F64, temp: F64, cum_new: F64, queued_w: F64
) -> Projection:
    """Fill ``out[h, f]`` with the features at origin minute ``i`` (arrays indexed by minute; ``temp`` may reach
    past ``i``: it is the weather forecast). ``cum_new[m]`` is the cumulative arrival power before minute ``m``."""
    n = F.size
    pr = state.project(h, i)
    out[:, 0] = pr.end_w
    out[:, 1] = pr.end_gpus
    out[:, 2] = pr.ckpt_w
    out[:, 3] = pr.ramp_w
    out[:, 4] = queued_w
    lo = np.clip(i - DAY_MIN + 1, 0, i + 1)
    hi = np.clip(i - DAY_MIN + 1 + h, 0, i + 1)
    out[:, 5] = cum_new[hi] - cum_new[lo]
    day0 = max(i + 1 - DAY_MIN, 0)
    rate = (cum_new[i + 1] - cum_new[day0]) / max(i + 1 - day0, 1)
    out[:, 6] = rate * h
    tgt = np.minimum(i + h, temp.size - 1)
    dt = temp[tgt] - temp[i]
    out[:, 7] = np.where(np.isfinite(dt), it[i] * dt, 0.0) if np.isfinite(it[i]) else 0.0
    recent = F[max(i - 14, 0) : i + 1]
    out[:, 8] = F[i] - float(np.nanmean(recent)) if np.any(np.isfinite(recent)) else 0.0
    past = i + h - DAY_MIN
    sv = np.where(past >= 0, F[np.clip(past, 0, n - 1)], np.nan) - F[i]
    out[:, 9] = np.where(np.isfinite(sv), sv, 0.0)
    out[:, 10] = pr.level_w
    out[:, 11] = pr.stall_w
    out[:, 12] = pr.service_w
    out[~np.isfinite(out)] = 0.0
    return pr


def queued_gpus_by_class(submit_min: F64, start_min: F64, kind: I64, n_gpus: I64, n: int, state: JobState) -> F64:
    """GPUs of the jobs the queue holds at each origin minute ``i`` (submitted by ``i + 1``, not started by then),
    by profile class ``[n, classes]``: a sweep line, so the queue costs one matrix row per origin."""
    n_cls = state.profile_w_per_gpu.size
    cls = (np.maximum(kind, -1) + 1) * N_GPU_BUCKETS + gpu_bucket(np.maximum(n_gpus, 1))
    first = np.ceil(submit_min - 1.0)  # first origin that knows the job
    last = np.where(np.isfinite(start_min), np.ceil(start_min - 1.0), n)  # first origin at which it has started
    ok = np.isfinite(first) & (last > first)
    a = np.clip(first[ok], 0, n).astype(np.int64)
    b = np.clip(last[ok], 0, n).astype(np.int64)
    g = np.maximum(n_gpus[ok], 1).astype(np.float64)
    delta = np.zeros((n + 1, n_cls))
    np.add.at(delta, (a, cls[ok]), g)
    np.add.at(delta, (b, cls[ok]), -g)
    return np.cumsum(delta, axis=0)[:n]


def build_features(
    run: RunData,
    origins: I64,
    horizons_min: I64 = MODEL_HORIZONS_MIN,
    overrun_s: F64 | None = None,
) -> FeatureSet:
    """Replay ``run`` and compute the features at ``origins`` (sorted minute indices) for ``horizons_min``."""
    origins = np.asarray(origins, np.int64)
    h = np.asarray(horizons_min, np.int64)
    n = run.n
    F, age = last_finite(run.facility_w)
    it, _ = last_finite(run.it_w)
    temp, _ = last_finite(run.outdoor_temp_c)
    jobs = run.jobs
    if overrun_s is None:
        overrun_s = np.zeros(4)
    over = np.where(jobs.kind >= 0, overrun_s[np.maximum(jobs.kind, 0)], 0.0)
    start_min = (jobs.start_s - run.t0_s) / STEP_S
    submit_min = (jobs.submit_s - run.t0_s) / STEP_S
    end_min = start_min + (jobs.work_s + over) / STEP_S  # inf for services, NaN while not started
    state = JobState()
    bounds = run.minute_slices()
    newpow = np.zeros(n)
    # queued jobs known at minute i: submitted by i, started after i; a small table kept sorted
    sub_order = np.argsort(submit_min, kind="stable")
    x = np.full((origins.size, h.size, len(FEATURES)), 0.0)
    y = np.full((origins.size, h.size), np.nan)
    now_w = np.full(origins.size, np.nan)
    stale = np.full(origins.size, np.nan)
    fb = np.zeros(origins.size)
    queued_gpus = queued_gpus_by_class(submit_min, start_min, jobs.kind, jobs.n_gpus, n, state)
    o = 0
    described = 0
    cum_new = np.zeros(n + 1)
    last_o = int(origins[-1]) if origins.size else -1
    for i in range(last_o + 1):
        # jobs the queue knows by the end of minute i get their static facts
        limit = np.searchsorted(submit_min[sub_order], i + 1, side="left")
        if limit > described:
            ids = sub_order[described:limit]
            state.describe(ids, jobs.kind[ids], jobs.n_gpus[ids])
            described = int(limit)
        a, b = bounds[i], bounds[i + 1]
        ids = run.job_id[a:b]
        if ids.size:
            started = np.isfinite(start_min[ids])
            end_now = end_min[ids]
            if run.job_work_left_s is not None:  # the job's progress: the end is the work it has left from now
                left = run.job_work_left_s[a:b]
                end_now = np.where(np.isfinite(left), i + 1.0 + left / STEP_S, end_now)
            state.describe(ids[started], jobs.kind[ids[started]], jobs.n_gpus[ids[started]], end_now[started])
            first = state.first_min[ids] < 0 if ids.max() < state.first_min.size else np.ones(ids.size, bool)
            state.observe(i, ids, run.job_power_w[a:b])
            if np.any(first):
                newpow[i] = float(state.profile_w(ids[first])[0].sum())
        else:
            state.minute = i
        cum_new[i + 1] = cum_new[i] + newpow[i]
        if i != origins[o]:
            continue
        while o < origins.size and origins[o] == i:
            queued = float(queued_gpus[i] @ state.profile_w_per_gpu_filled().reshape(-1))
            pr = origin_features(x[o], state, i, h, F, it, temp, cum_new, np.full(h.size, queued))
            valid = (i + h) < n
            yt = np.full(h.size, np.nan)
            yt[valid] = run.facility_w[(i + h)[valid]] - F[i]
            y[o] = yt
            now_w[o] = F[i]
            stale[o] = age[i]
            fb[o] = pr.fallback_w
            o += 1
        if o >= origins.size:
            break
    x[~np.isfinite(x)] = 0.0
    return FeatureSet(origins, h, x, y, now_w, stale, fb)
