"""What the forecaster knows about every job, learned online from per-minute job power (only the past).

:class:`JobState` is fed one minute at a time (job ids and their mean power that minute) and keeps, per job: when
it was first and last seen, its running level (an EWMA over minutes that are not checkpoint dips), its
checkpoint dips (start of the last one, period between dip starts, typical length and depth), and per
(kind, GPU-count bucket) a learned *profile* (W per GPU) for jobs too young to have a level of their own. Arrays
are indexed by job id and grow as ids appear; every update is vectorized over the jobs of the minute.

:meth:`JobState.project` turns that into each active job's expected power at future minutes: its level, a dip
where a checkpoint is due, zero after its expected end. Jobs without a profile of their own use the profile of
their class, then the fleet-wide mean (a *fallback*, reported so intervals can be widened), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

LEVEL_ALPHA = 0.3  # EWMA weight of a new non-dip minute in a job's level
DIP_RATIO = 0.9  # a minute below this share of the level is a dip (checkpoint or stall)
DEFAULT_CKPT_DEPTH = 0.25  # checkpoint power / level until a job's own is seen
MAX_CKPT_MINUTES = 3  # longer dips are stalls (faults), not checkpoints
BEAT_TOL_MIN = 1.5  # a dip within this of a multiple of the period is a checkpoint on the beat
TAIL_SHARE = 0.02  # a minute next to a dip this far below the level holds part of the checkpoint (not noise)
PLL_PHASE = 0.5  # share of a checkpoint's miss of its beat that moves the beat
PLL_PERIOD = 0.2  # share of the miss (per beat) that moves the period
RELOCK_DEPTH = 0.75  # a short dip below this share of the level is deep (a checkpoint, not a straggler)
STALL_DEPTH_SHARE = 0.95  # a dip below this share of the checkpoint depth is a stall from its first minute
MIN_LEVEL_MINUTES = 3  # minutes before a job's own level is trusted
N_GPU_BUCKETS = 6  # 1, 2-3, 4-7, 8-31, 32-255, 256+
SERVICE_KIND = 2  # inference services: load follows request arrivals, no checkpoints or stalls of their own
SERVICE_KINDS = (2, 3)  # kinds whose long dips are load, not stalls (inference, batch)
STALL_DEPTH = 0.5  # a dip below this share of the level, longer than a checkpoint, teaches the stall shape
N_STALL_SAMPLES = 32  # recent stalls whose flat duration is kept (the restart delay's distribution)
PRIOR_FLAT_MIN = 7.0  # flat minutes of a stall before any is seen
PRIOR_RAMP_MIN = 5.0  # minutes of a restart ramp before any is seen
OWN_RAMP_WEIGHT = 0.5  # weight of a job's latest restart ramp in its own (a job restarts the same way each time)
PERIOD_MIN_RANGE = (30.0, 90.0)  # where the services' load period (tiled arrival traces) is searched [min]
PERIOD_STEP_MIN = 0.05
PERIOD_EVERY_MIN = 60  # how often the period is searched again
PERIOD_HISTORY_MIN = 1440  # minutes of the services' load used to search it
PERIOD_MIN_HISTORY = 180


def gpu_bucket(n_gpus: I64) -> I64:
    """Bucket of a GPU count (0: 1 GPU ... 5: 256 or more).

    >>> gpu_bucket(np.array([1, 2, 4, 8, 32, 256, 4096])).tolist()
    [0, 1, 2, 3, 4, 5, 5]
    """
    edges = np.array([2, 4, 8, 32, 256])
    return np.searchsorted(edges, np.asarray(n_gpus), side="right").astype(np.int64)


def _recent(samples: F64, new: F64) -> F64:
    """The sample history with ``new`` appended, the last N_STALL_SAMPLES kept."""
    return np.concatenate([samples, new])[-N_STALL_SAMPLES:]


def _blend(own: F64, new: F64, weight: float) -> F64:
    """A job's own learned value moved by ``weight`` toward ``new``; ``new`` where it had none yet (NaN)."""
    return np.where(np.isfinite(own), (1.0 - weight) * own + weight * new, new)


def lagged(series: F64, t: F64, lag_min: F64) -> F64:
    """``series`` at minutes ``t - lag`` for fractional lags: the two minutes around it, weighted linearly;
    NaN where that reaches outside the series.

    >>> lagged(np.array([0.0, 10.0, 20.0, 30.0]), np.array([3.0, 3.0]), np.array([1.0, 1.25])).tolist()
    [20.0, 17.5]
    """
    t = np.asarray(t, np.float64)
    lag = np.asarray(lag_min, np.float64)
    lo = np.floor(lag)
    w = lag - lo
    a = (t - lo).astype(np.int64)
    b = a - 1
    n = series.size
    ok = (b >= 0) & (a < n)
    va = series[np.clip(a, 0, n - 1)]
    vb = series[np.clip(b, 0, n - 1)]
    return np.asarray(np.where(ok, (1.0 - w) * va + w * np.where(w > 0, vb, 0.0), np.nan))


def service_period(series_w: F64) -> float:
    """The period [min] (fractional) at which a series repeats best, searched in ``PERIOD_MIN_RANGE``: a coarse
    scan, then a fine one around the best; 0 when no lag beats the 15-minute persistence error by 20 %.

    >>> t = np.arange(600.0)
    >>> round(service_period(np.sin(2 * np.pi * t / 57.3) + 0.3 * np.sin(2 * np.pi * t / 11.46)), 1)
    57.3
    """
    x = np.asarray(series_w, np.float64)
    lo_l, hi_l = PERIOD_MIN_RANGE
    t = np.arange(int(hi_l) + 2, x.size, dtype=np.float64)
    if t.size < 30:
        return 0.0

    def err(lags: F64) -> F64:
        d = np.abs(x[t.astype(np.int64)][None, :] - lagged(x, t[None, :], lags[:, None]))
        with np.errstate(invalid="ignore"):
            return np.asarray(np.nanmean(np.where(np.isfinite(d), d, np.nan), axis=1))

    coarse = np.arange(lo_l, hi_l + 1e-9, 0.25)
    e = err(coarse)
    if not np.any(np.isfinite(e)):
        return 0.0
    best = float(coarse[int(np.nanargmin(e))])
    fine = np.arange(max(best - 0.5, lo_l), min(best + 0.5, hi_l) + 1e-9, PERIOD_STEP_MIN)
    ef = err(fine)
    k = int(np.nanargmin(ef))
    base = np.abs(x[15:] - x[:-15])
    ref = float(np.nanmean(base)) if np.any(np.isfinite(base)) else 0.0
    return float(fine[k]) if ref > 0 and ef[k] < 0.8 * ref else 0.0


@dataclass
class Projection:
    """Expected job power at the requested future minutes, summed over active jobs, and its parts [W]."""

    now_w: float  # sum of the active jobs' power this minute
    end_w: F64  # per horizon: minus the power of jobs expected to have ended
    end_gpus: F64  # per horizon: GPUs freed by those ends
    ckpt_w: F64  # per horizon: change from checkpoint dips (due ones down, current ones back up)
    ramp_w: F64  # per horizon: young jobs moving from their current power to their profile
    fallback_w: float  # power of active jobs forecast from a class or fleet profile instead of their own
    level_w: F64  # per horizon: steady jobs moving from this minute's power back to their level
    stall_w: F64 = field(default_factory=lambda: np.zeros(0))  # per horizon: stalled jobs returning
    service_w: F64 = field(default_factory=lambda: np.zeros(0))  # per horizon: services' load, one period ago
    ids: I64 = field(default_factory=lambda: np.zeros(0, np.int64))  # the active jobs
    job_delta_w: F64 = field(default_factory=lambda: np.zeros((0, 0)))  # [jobs, horizons] expected change

    def announced_w(self) -> F64:
        """The change the queue and the jobs' rhythms announce: ends, checkpoints, restarts and ramps."""
        return self.end_w + self.ckpt_w + self.ramp_w + (self.stall_w if self.stall_w.size else 0.0)


class JobState:
    """Per-job levels, checkpoint rhythm and class profiles, learned from the minutes seen so far."""

    def __init__(self, n_kinds: int = 4) -> None:
        self.n_kinds = n_kinds
        self._cap = 0
        self.first_min = np.zeros(0, np.int64)
        self.last_min = np.zeros(0, np.int64)
        self.n_obs = np.zeros(0, np.int64)
        self.level_w = np.zeros(0)
        self.last_w = np.zeros(0)
        self.dip_start = np.zeros(0, np.int64)  # minute the current or last dip began (-1: none yet)
        self.anchor_is_ckpt = np.zeros(0, bool)
        self.dip_min_w = np.zeros(0)  # lowest power of the current dip
        self.dip_start_f = np.zeros(0)  # fractional minute the current dip began
        self.dip_frac = np.zeros(0)  # minutes of checkpoint accumulated in the current dip
        self.anchor_f = np.zeros(0)  # fractional minute the checkpoint rhythm counts from (-1: none)
        self.ckpt_dur_min = np.zeros(0)  # learned checkpoint duration [min]
        self.ckpt_area_min = np.zeros(0)  # learned checkpoint area: minutes x (1 - power / level)
        self.dip_area = np.zeros(0)  # area of the current dip
        self.last_dip_f = np.zeros(0)  # start of the last short dip, on the beat or not (-1: none)
        self.last_deep_f = np.zeros(0)  # start of the last deep short dip (-1: none)
        self.deep_gap = np.zeros(0)  # minutes between the last two deep short dips (-1: none)
        self.stall_end = np.zeros(0, np.int64)  # minute the last stall ended, until the next checkpoint (-1)
        self.restart_f = np.zeros(0)  # fractional minute the last stalled job was back at its level
        self.own_lag_min = np.zeros(0)  # the job's first checkpoint after a restart = restart + period + this
        self.ckpt_depth = np.zeros(0)  # learned power during a checkpoint / level (NaN: not seen yet)
        self.floor_last = np.zeros(0, np.int64)  # last minute of the current dip spent near its lowest power
        self.in_dip = np.zeros(0, bool)
        self.n_dips = np.zeros(0, np.int64)
        self.period_min = np.zeros(0)  # EWMA of the minutes between dip starts (0: unknown)
        self.kind = np.zeros(0, np.int64)  # -1 unknown
        self.n_gpus = np.zeros(0, np.int64)
        self.end_min = np.zeros(0)  # expected end minute (inf unknown)
        self.own_ramp_min = np.zeros(0)  # the job's own restart ramp [min] (NaN: it has not restarted yet)
        self.own_floor = np.zeros(0)  # the job's power while stalled / its level (NaN: not stalled yet)
        self.own_top = np.zeros(0)  # where the job's restart ramp ends before it jumps to its level (share of span)
        # class profiles: EWMA of W per GPU by (kind + 1 for unknown, bucket)
        self.profile_w_per_gpu = np.full((n_kinds + 1, N_GPU_BUCKETS), np.nan)
        self.fleet_w_per_gpu = np.nan
        # learned from the stalls of training jobs: flat minutes (the restart delay) and the restart ramp
        self.flat_samples_min = np.array([PRIOR_FLAT_MIN])
        self.flat_weights = np.array([1.0])  # GPUs of the job each flat duration was seen on
        self.ramp_samples_min = np.array([PRIOR_RAMP_MIN])
        self.ramp_len_min = PRIOR_RAMP_MIN  # median of the recent ramps: for jobs that have not restarted yet
        self.floor_samples = np.zeros(0)  # recent stalls' floor power / level
        self.top_samples = np.zeros(0)  # recent restart ramps' last minute before the level, as a share of the span
        # the services' summed power per minute and its period (arrival traces repeat), 0: none found yet
        self.service_hist_w = np.full(1024, np.nan)
        self.service_period_min = 0.0
        self.post_stall_lag_min = -1.0  # learned: first checkpoint after a stall = stall end + period + this
        self.minute = -1

    def _ensure(self, max_id: int) -> None:
        if max_id < self._cap:
            return
        cap = max(2 * self._cap, max_id + 1, 64)
        for name, fill in (
            ("first_min", -1),
            ("last_min", -(10**9)),
            ("n_obs", 0),
            ("level_w", 0.0),
            ("last_w", 0.0),
            ("dip_start", -1),
            ("anchor_is_ckpt", False),
            ("dip_min_w", 0.0),
            ("dip_start_f", -1.0),
            ("dip_frac", 0.0),
            ("anchor_f", -1.0),
            ("ckpt_dur_min", 1.0),
            ("ckpt_area_min", 0.75),
            ("dip_area", 0.0),
            ("stall_end", -1),
            ("restart_f", -1.0),
            ("own_lag_min", np.nan),
            ("last_dip_f", -1.0),
            ("last_deep_f", -1.0),
            ("deep_gap", -1.0),
            ("ckpt_depth", np.nan),
            ("floor_last", -1),
            ("in_dip", False),
            ("n_dips", 0),
            ("period_min", 0.0),
            ("kind", -1),
            ("n_gpus", 0),
            ("end_min", np.inf),
            ("own_ramp_min", np.nan),
            ("own_floor", np.nan),
            ("own_top", np.nan),
        ):
            old = getattr(self, name)
            new = np.full(cap, fill, dtype=old.dtype)
            new[: old.size] = old
            setattr(self, name, new)
        self._cap = cap

    def describe(self, ids: I64, kind: I64, n_gpus: I64, end_min: F64 | None = None) -> None:
        """Static facts the queue knows about jobs: kind (index, -1 unknown), GPUs, expected end minute."""
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:
            return
        self._ensure(int(ids.max()))
        self.kind[ids] = kind
        self.n_gpus[ids] = n_gpus
        if end_min is not None:
            self.end_min[ids] = end_min

    def observe(self, minute: int, ids: I64, power_w: F64) -> None:
        """One minute of per-job mean power. Non-finite or negative values are dropped (the job keeps its state)."""
        ids = np.asarray(ids, np.int64)
        p = np.asarray(power_w, np.float64)
        good = np.isfinite(p) & (p >= 0) & (ids >= 0)
        ids, p = ids[good], p[good]
        self.minute = minute
        if ids.size == 0:
            return
        self._ensure(int(ids.max()))
        new = self.first_min[ids] < 0
        self.first_min[ids[new]] = minute
        self.level_w[ids[new]] = p[new]
        seasoned = self.n_obs[ids] >= MIN_LEVEL_MINUTES
        lvl = self.level_w[ids]
        dip = seasoned & (p < DIP_RATIO * lvl)
        starting = dip & ~self.in_dip[ids]
        self.dip_start[ids[starting]] = minute
        self.dip_min_w[ids[starting]] = p[starting]
        jd = ids[dip]
        self.dip_min_w[jd] = np.minimum(self.dip_min_w[jd], p[dip])
        at_floor = dip & (p <= 1.1 * self.dip_min_w[ids])
        self.floor_last[ids[at_floor]] = minute
        ratio = np.where(lvl > 0, p / np.maximum(lvl, 1e-9), 1.0)
        # share of this minute spent in a checkpoint, from the job's full checkpoint depth
        d_full = np.where(np.isfinite(self.ckpt_depth[ids]), self.ckpt_depth[ids], DEFAULT_CKPT_DEPTH)
        f = np.clip((1.0 - ratio) / np.maximum(1.0 - d_full, 0.05), 0.0, 1.0)
        # a checkpoint's edges spill into the minutes either side of the dip (above DIP_RATIO of the level): the
        # minute before it counts towards its start and area when it was below the level by more than noise
        js0 = ids[starting]
        before = (self.last_min[js0] == minute - 1) & (lvl[starting] > 0)
        tail0 = np.where(before, 1.0 - self.last_w[js0] / np.maximum(lvl[starting], 1e-9), 0.0)
        tail0 = np.where(tail0 > TAIL_SHARE, np.minimum(tail0, 1.0), 0.0)
        f0 = np.clip(tail0 / np.maximum(1.0 - d_full[starting], 0.05), 0.0, 1.0)
        self.dip_start_f[js0] = minute + 1.0 - f[starting] - f0
        self.dip_frac[js0] = f0
        self.dip_frac[jd] += f[dip]
        self.dip_area[js0] = tail0
        self.dip_area[jd] += 1.0 - ratio[dip]
        # a dip run that ends: short ones are checkpoints (their starts give the rhythm), long ones stalls
        ending = ~dip & self.in_dip[ids]
        je = ids[ending]
        run_len = minute - self.dip_start[je]
        short = run_len <= MAX_CKPT_MINUTES
        jc = je[short]
        start_f = self.dip_start_f[jc]
        gap = start_f - self.anchor_f[jc]
        old_p = self.period_min[jc]
        after_ckpt = (self.anchor_f[jc] >= 0) & self.anchor_is_ckpt[jc]
        k = np.where(old_p > 0, np.maximum(np.round(gap / np.where(old_p > 0, old_p, 1.0)), 1.0), 1.0)
        on_beat = (old_p > 0) & (np.abs(gap - k * old_p) < BEAT_TOL_MIN)
        # a dip off the beat of a known rhythm (a straggler, a partial fault) moves nothing, unless it is on the
        # beat of the previous off-beat dip: then the rhythm itself has shifted (a restart not seen as a stall)
        gap2 = start_f - self.last_dip_f[jc]
        k2 = np.where(old_p > 0, np.maximum(np.round(gap2 / np.where(old_p > 0, old_p, 1.0)), 1.0), 1.0)
        shifted = (old_p > 0) & (self.last_dip_f[jc] >= 0) & (np.abs(gap2 - k2 * old_p) < BEAT_TOL_MIN)
        self.last_dip_f[jc] = start_f
        # deep dips (checkpoints, not stragglers) that keep an even spacing off a known rhythm mean the rhythm was
        # learned wrong (e.g. a fraction of the true period from two close dips): it locks onto their spacing
        deep = self.dip_min_w[jc] < RELOCK_DEPTH * self.level_w[jc]
        gap3 = start_f - self.last_deep_f[jc]
        seen = deep & (self.last_deep_f[jc] >= 0)
        relock = seen & (old_p > 0) & ~on_beat & ~shifted & (self.deep_gap[jc] > 0)
        relock &= np.abs(gap3 - self.deep_gap[jc]) < BEAT_TOL_MIN
        self.deep_gap[jc] = np.where(seen, gap3, np.where(deep, -1.0, self.deep_gap[jc]))
        self.last_deep_f[jc] = np.where(deep, start_f, self.last_deep_f[jc])
        accept = ~after_ckpt | (old_p <= 0) | on_beat | shifted | relock
        learn = after_ckpt & ((old_p <= 0) | on_beat) & (gap > 0)
        # a checkpoint on the beat nudges the rhythm (a phase-locked loop): the beat moves part of the way to the
        # dip's estimated start and the period by a smaller share of the miss, so one dip's estimation noise (its
        # start comes from a partial minute) does not move the next beat by all of it
        locked = learn & (old_p > 0) & on_beat
        miss = gap - k * old_p
        pll_start = np.where(locked, self.anchor_f[jc] + k * old_p + PLL_PHASE * miss, start_f)
        self.period_min[jc] = np.where(learn, np.where(old_p > 0, 0.5 * old_p + 0.5 * gap / k, gap), old_p)
        self.period_min[jc] = np.where(locked, old_p + PLL_PERIOD * miss / k, self.period_min[jc])
        self.period_min[jc] = np.where(relock, gap3, self.period_min[jc])
        # the first checkpoint after a restart teaches how it sits relative to the stall's end
        first_after = self.stall_end[jc] >= 0
        lag = start_f - self.restart_f[jc] - self.period_min[jc]
        use_lag = first_after & (self.period_min[jc] > 0) & (np.abs(lag) < 5.0)
        if np.any(use_lag):
            self.post_stall_lag_min = 0.7 * self.post_stall_lag_min + 0.3 * float(np.mean(lag[use_lag]))
            # the lag is the job's own (its checkpoint's length): a job restarts the same way each time
            jl, ol = jc[use_lag], self.own_lag_min[jc[use_lag]]
            self.own_lag_min[jl] = _blend(ol, lag[use_lag], 0.5)
        self.stall_end[jc] = -1
        jc = jc[accept]
        beat_f = pll_start[accept]
        start_f = start_f[accept]
        self.n_dips[jc] += 1
        # the full depth is the deepest minute seen (a checkpoint never goes below it); the duration follows
        # from the dip's area (sum of 1 - power/level over its minutes), which needs no depth
        deepest = self.dip_min_w[jc] / np.maximum(self.level_w[jc], 1e-9)
        self.ckpt_depth[jc] = np.fmin(self.ckpt_depth[jc], deepest)
        tail1 = 1.0 - ratio[ending][short][accept]  # ... and the minute after it
        area = self.dip_area[jc] + np.where(tail1 > TAIL_SHARE, tail1, 0.0)
        self.ckpt_area_min[jc] = np.where(self.n_dips[jc] == 1, area, 0.7 * self.ckpt_area_min[jc] + 0.3 * area)
        self.ckpt_dur_min[jc] = self.ckpt_area_min[jc] / np.maximum(1.0 - self.ckpt_depth[jc], 0.05)
        self.anchor_f[jc] = beat_f
        self.anchor_is_ckpt[jc] = True
        js = je[~short]
        # only deep dips of training jobs teach the stall shape (a service's long dip is its load falling)
        teach = js[(self.dip_min_w[js] < STALL_DEPTH * self.level_w[js]) & ~np.isin(self.kind[js], SERVICE_KINDS)]
        if teach.size:
            flat_min = (self.floor_last[teach] + 1 - self.dip_start[teach]).astype(np.float64)
            self.flat_samples_min = _recent(self.flat_samples_min, flat_min)
            gpus = np.maximum(self.n_gpus[teach], 1).astype(np.float64)
            self.flat_weights = _recent(self.flat_weights, gpus)
            ramp = np.clip(minute - 1 - self.floor_last[teach], 1, None).astype(np.float64)
            # a restart replays the job's own start-up (its checkpoint re-read): its ramp is the job's, the
            # median of recent ones stands in for jobs that have not restarted yet (robust to odd long dips)
            self.ramp_samples_min = _recent(self.ramp_samples_min, ramp)
            self.ramp_len_min = float(np.median(self.ramp_samples_min))
            floor = self.dip_min_w[teach] / np.maximum(self.level_w[teach], 1e-9)
            self.floor_samples = _recent(self.floor_samples, floor)
            self.own_floor[teach] = floor
            # a restart ramps through its start-up and then steps up to the level: the last ramp minute's share of
            # the way up (self.last_w still holds the previous minute here)
            lv = np.maximum(self.level_w[teach], 1e-9)
            top = (self.last_w[teach] - self.dip_min_w[teach]) / np.maximum(lv - self.dip_min_w[teach], 1e-9)
            top = np.where(ramp >= 2, np.clip(top, 0.2, 1.0), np.nan)  # a one-minute ramp shows no shape
            self.top_samples = _recent(self.top_samples, top[np.isfinite(top)])
            self.own_top[teach] = np.where(np.isfinite(top), top, self.own_top[teach])
            self.own_ramp_min[teach] = _blend(self.own_ramp_min[teach], ramp, OWN_RAMP_WEIGHT)
        # a stalled job restarts, its checkpoint timer with it: the next checkpoint comes about a period after
        # it is back at its level (a learned lag, the job's own once seen); back part way through this minute:
        # the share of the minute above the ramp's last minute
        prev = self.last_w[js]
        p_js = p[ending][~short]
        up = np.clip((p_js - prev) / np.maximum(self.level_w[js] - prev, 1e-9), 0.0, 1.0)
        self.restart_f[js] = minute + 1.0 - up
        own_lag = self.own_lag_min[js]
        self.anchor_f[js] = self.restart_f[js] + np.where(np.isfinite(own_lag), own_lag, self.post_stall_lag_min)
        self.anchor_is_ckpt[js] = False
        self.stall_end[js] = minute
        self.in_dip[ids] = dip
        upd = ~dip
        ju = ids[upd]
        self.level_w[ju] = np.where(
            self.n_obs[ju] == 0, p[upd], (1 - LEVEL_ALPHA) * self.level_w[ju] + LEVEL_ALPHA * p[upd]
        )
        self.last_w[ids] = p
        self.last_min[ids] = minute
        self.n_obs[ids] += 1
        self._observe_services(minute, float(p[self.kind[ids] == SERVICE_KIND].sum()))
        # class profiles from seasoned jobs with a known GPU count
        ok = seasoned & ~dip & (self.n_gpus[ids] > 0)
        if np.any(ok):
            jo = ids[ok]
            per_gpu = self.level_w[jo] / self.n_gpus[jo]
            k = self.kind[jo] + 1
            b = gpu_bucket(self.n_gpus[jo])
            flat = k * N_GPU_BUCKETS + b
            cells = np.bincount(flat, minlength=(self.n_kinds + 1) * N_GPU_BUCKETS)
            sums = np.bincount(flat, weights=per_gpu, minlength=cells.size)
            prof = self.profile_w_per_gpu.reshape(-1)
            have = cells > 0
            mean = sums[have] / cells[have]
            prof[have] = np.where(np.isnan(prof[have]), mean, 0.9 * prof[have] + 0.1 * mean)
            fleet = float(per_gpu.mean())
            self.fleet_w_per_gpu = (
                fleet if np.isnan(self.fleet_w_per_gpu) else 0.95 * self.fleet_w_per_gpu + 0.05 * fleet
            )

    def _observe_services(self, minute: int, power_w: float) -> None:
        if minute < 0:
            return
        if minute >= self.service_hist_w.size:
            grown = np.full(max(2 * self.service_hist_w.size, minute + 1), np.nan)
            grown[: self.service_hist_w.size] = self.service_hist_w
            self.service_hist_w = grown
        self.service_hist_w[minute] = power_w
        if minute % PERIOD_EVERY_MIN == 0 and minute >= PERIOD_MIN_HISTORY:
            recent = self.service_hist_w[max(minute + 1 - PERIOD_HISTORY_MIN, 0) : minute + 1]
            self.service_period_min = service_period(recent)

    def service_change(self, horizons_min: I64, minute: int) -> F64:
        """The services' expected change at ``minute + h``: their power a whole number of periods earlier (the
        latest one already seen) minus their power now; 0 without a period or history."""
        h = np.asarray(horizons_min, np.float64)
        per = self.service_period_min
        if per <= 0 or minute < 0 or minute >= self.service_hist_w.size:
            return np.zeros(h.size)
        k = np.ceil(h / per)
        k = np.where(np.floor(k * per) < h, k + 1, k)
        lag = k * per
        val = lagged(self.service_hist_w[: minute + 1], minute + h, lag)
        out = val - self.service_hist_w[minute]
        return np.where(np.isfinite(out), out, 0.0)

    def active(self, minute: int | None = None) -> I64:
        """Jobs seen in the given minute (default: the latest observed)."""
        m = self.minute if minute is None else minute
        return np.flatnonzero(self.last_min[: self._cap] == m).astype(np.int64)

    def profile_w_per_gpu_filled(self) -> F64:
        """Class profiles [W per GPU] with the fleet mean where a class has none yet (0 before any)."""
        fleet = self.fleet_w_per_gpu if np.isfinite(self.fleet_w_per_gpu) else 0.0
        return np.where(np.isnan(self.profile_w_per_gpu), fleet, self.profile_w_per_gpu)

    def profile_w(self, ids: I64) -> tuple[F64, B]:
        """Class profile power of jobs [W] and whether it came from the fleet-wide fallback."""
        k = self.kind[ids] + 1
        b = gpu_bucket(np.maximum(self.n_gpus[ids], 1))
        per_gpu = self.profile_w_per_gpu[k, b]
        fb = np.isnan(per_gpu)
        fleet = self.fleet_w_per_gpu if np.isfinite(self.fleet_w_per_gpu) else 0.0
        per_gpu = np.where(fb, fleet, per_gpu)
        return per_gpu * np.maximum(self.n_gpus[ids], 1), fb

    def project(self, horizons_min: I64, minute: int | None = None) -> Projection:
        """Expected change of the active jobs' power at ``minute + h`` for each horizon (see the module docstring)."""
        m = self.minute if minute is None else minute
        h = np.asarray(horizons_min, np.int64)
        ids = self.active(m)
        nh = h.size
        service_w = self.service_change(h, m)
        if ids.size == 0:
            z = np.zeros(nh)
            return Projection(0.0, z, z.copy(), z.copy(), z.copy(), 0.0, z.copy(), z.copy(), service_w, ids)
        now = self.last_w[ids]
        young = self.n_obs[ids] < MIN_LEVEL_MINUTES
        service = self.kind[ids] == SERVICE_KIND  # forecast by their period (service_w), not by dips
        prof, _fb = self.profile_w(ids)
        has_prof = np.isfinite(self.profile_w_per_gpu[self.kind[ids] + 1, gpu_bucket(np.maximum(self.n_gpus[ids], 1))])
        # young jobs head for their class profile; the others stay at their level
        level = np.where(young & (self.n_gpus[ids] > 0) & (prof > 0), prof, self.level_w[ids])
        fallback_w = float(now[young & ~has_prof].sum())
        t = m + h[None, :]  # [1, H]
        ended = t >= self.end_min[ids][:, None]  # [J, H]
        end_c = -now[:, None] * ended
        end_gpus = (self.n_gpus[ids][:, None] * ended).sum(axis=0).astype(np.float64)
        period = self.period_min[ids]
        known = (period > 0) & (self.anchor_f[ids] >= 0) & ~service
        t_end = t + 1.0
        frac = np.zeros((ids.size, h.size))
        rk = np.flatnonzero(known)  # only jobs with a rhythm (a few large ones) need the checkpoint arithmetic
        if rk.size:
            jr = ids[rk]
            per = self.period_min[jr][:, None]
            dur = np.clip(self.ckpt_dur_min[jr], 0.05, MAX_CKPT_MINUTES)[:, None]
            anchor = self.anchor_f[jr][:, None]
            k = np.floor((t_end - anchor) / per)
            for shift in (0.0, 1.0):  # the latest checkpoint start before the minute ends, and the one before
                kk = k - shift
                st = anchor + kk * per
                ov = np.clip(np.minimum(st + dur, t_end) - np.maximum(st, t), 0.0, None)
                frac[rk] += np.where(kk >= 1, ov, 0.0)
        # a checkpoint in progress finishes its expected duration
        depth = np.where(np.isfinite(self.ckpt_depth[ids]), self.ckpt_depth[ids], DEFAULT_CKPT_DEPTH)
        # a dip that lasts too long or goes deeper than any checkpoint is a stall: flat, then a restart ramp
        dipping = self.in_dip[ids] & ~service
        too_deep = now < STALL_DEPTH_SHARE * depth * self.level_w[ids]
        gap_now = self.dip_start_f[ids] - self.anchor_f[ids]
        p_now = np.where(known, period, 1.0)
        beat_now = np.abs(gap_now - np.maximum(np.round(gap_now / p_now), 1.0) * p_now) < BEAT_TOL_MIN
        # a deep dip off the beat of a known rhythm is a fault from its first minute: stragglers are shallow and
        # checkpoints keep the beat (on texas 59 of 73 such first minutes of the 8,192-GPU job were faults)
        off_beat = known & ~beat_now & (now < RELOCK_DEPTH * self.level_w[ids])
        stalled = dipping & ((m - self.dip_start[ids] >= MAX_CKPT_MINUTES) | too_deep | off_beat)
        in_short = dipping & ~stalled
        # a dip in progress continues as a checkpoint only on the beat of a known rhythm (else it is a blip)
        in_short &= ~known | beat_now
        rs = np.flatnonzero(in_short)
        if rs.size:
            rem = np.maximum(self.ckpt_dur_min[ids[rs]] - self.dip_frac[ids[rs]], 0.0)[:, None]
            frac[rs] += np.clip(np.minimum(m + 1.0 + rem, t_end) - np.maximum(m + 1.0, t), 0.0, None)
        frac = np.clip(frac, 0.0, 1.0)
        # a checkpoint in progress recovers to the level
        base = np.where(dipping, self.level_w[ids], level)
        future = base[:, None] * (1.0 - (1.0 - depth)[:, None] * frac)
        alive = ~ended
        stall_c = np.zeros((ids.size, nh))
        if np.any(stalled):
            js = np.flatnonzero(stalled)
            stall_c[js] = (self._stall_return(ids[js], now[js], m, h) - now[js][:, None]) * alive[js]
            future[js] = base[js][:, None]  # their return is in stall_c, not in the checkpoint part
        back = (base - now)[:, None] * alive
        steady = ~service & ~young
        ckpt_c = (future - base[:, None]) * alive * ~service[:, None] + back * (dipping & ~stalled & ~young)[:, None]
        level_c = back * (~dipping & steady)[:, None]  # steady jobs back to their level
        ramp_c = (level - now)[:, None] * alive * young[:, None]
        delta = end_c + ckpt_c + stall_c + level_c + ramp_c
        return Projection(
            float(now.sum()),
            end_c.sum(axis=0),
            end_gpus,
            ckpt_c.sum(axis=0),
            ramp_c.sum(axis=0),
            fallback_w,
            level_c.sum(axis=0),
            stall_c.sum(axis=0),
            service_w,
            ids,
            delta,
        )

    def _stall_return(self, jobs: I64, now_w: F64, m: int, h: I64) -> F64:
        """Median power [jobs, horizons] of stalled jobs: flat for the rest of their restart delay, then the
        restart ramp (the job's own, else the recent median) to the level; a job already ramping continues from
        where it is on the ramp. Over the learned flat durations longer than the time already spent flat the
        power at a future minute falls with the duration, so its median (what MAE rewards; a mean is pulled by
        the rare long stall) is the power of the median remaining delay."""
        lv = self.level_w[jobs]
        # the floor: the lowest minute so far, or lower where the job's earlier stalls (else recent ones) went
        # lower: the first minute of a fault holds only part of a minute at the floor
        prior = self.own_floor[jobs]
        if self.floor_samples.size:
            prior = np.where(np.isfinite(prior), prior, float(np.median(self.floor_samples)))
        fl = np.fmin(self.dip_min_w[jobs], prior * lv)
        span = np.maximum(lv - fl, 1.0)
        own = self.own_ramp_min[jobs]
        ramp_n = np.maximum(np.where(np.isfinite(own), own, self.ramp_len_min), 1.0)[:, None]  # [J, 1]
        top = self.own_top[jobs]
        if self.top_samples.size:
            top = np.where(np.isfinite(top), top, float(np.median(self.top_samples)))
        top = np.where(np.isfinite(top), top, 1.0)[:, None]  # [J, 1]; 1: a straight ramp to the level
        ramping = self.floor_last[jobs] < m
        # ramping: position along the ramp [min] from the power reached
        pos = np.clip((now_w - fl)[:, None] / (span[:, None] * top), 0.0, 1.0) * ramp_n
        ahead = (pos + h[None, :]) / ramp_n  # [J, H]
        # flat: the ramp starts at dip_start + D, D the median of the learned flat durations at least the minutes
        # spent flat, each weighted by its job's GPUs (a large job's floor and ramp are clean; a small job's long
        # deep dip is as often throttling or a pause as a fault)
        elapsed = (m + 1 - self.dip_start[jobs]).astype(np.float64)
        d_med = self._median_flat_min(elapsed)
        # minute m + h lies (m + h + 0.5) - (dip_start + D) minutes into the ramp
        into = (m + h[None, :] + 0.5 - (self.dip_start[jobs] + d_med)[:, None]) / ramp_n
        u = np.where(ramping[:, None], ahead, into)  # share of the ramp done at each future minute
        share = np.where(u >= 1.0, 1.0, top * np.clip(u, 0.0, 1.0))
        return np.asarray(fl[:, None] + span[:, None] * share)

    def _median_flat_min(self, elapsed_min: F64) -> F64:
        """Weighted median of the learned flat durations at least ``elapsed_min`` (per job); a stall longer than
        every one seen ends about a minute from now."""
        order = np.argsort(self.flat_samples_min)
        d, w = self.flat_samples_min[order], self.flat_weights[order]
        cond = d[None, :] >= elapsed_min[:, None]  # [J, S]
        cw = np.cumsum(np.where(cond, w[None, :], 0.0), axis=1)
        total = cw[:, -1:]
        k = np.argmax(cw >= 0.5 * total, axis=1)
        return np.asarray(np.where(total[:, 0] > 0, d[k], elapsed_min + 1.0))
