"""The live forecaster: fed every cycle, asked for the next hour every simulated minute.

:class:`LiveForecaster` folds each snapshot into per-minute means (site facility and IT power, outdoor
temperature, per-job power) and, when a minute closes, into the :class:`~powerplane.forecast.jobstate.JobState`.
``forecast(now_s, timeline)`` runs the registry's champion (or, with no registry or no champion yet, an untrained
*prior* with wide bands) on the features of the last closed minute. With the scheduler's timeline the known ends
and queued starts come from it.

Bad input never becomes a zero forecast: a snapshot without site power is counted (``rejected``) and skipped;
jobs reported with partial GPU coverage are scaled up by their coverage (dropped and counted below 50 %);
a gap in telemetry widens the bands with the age of the last reading; jobs with unknown profiles use the fleet's
and widen the bands (see :mod:`powerplane.forecast.jobaware`). The band's width then follows the coverage its own
forecasts get once their targets close (adaptive conformal, :mod:`powerplane.forecast.adapt`; reset when the
champion changes).

:class:`~powerplane.forecast.monitor.MonitoredForecaster` adds the monitoring loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.forecast.adapt import BandAdapter
from powerplane.forecast.data import STEP_S, JobInfo, RunData
from powerplane.forecast.features import FEATURES, MODEL_HORIZONS_MIN, FeatureSet, origin_features
from powerplane.forecast.jobaware import NAME, JobAwareModel
from powerplane.forecast.jobstate import JobState, Projection
from powerplane.forecast.placement import marginal_ratio, rack_forecast
from powerplane.forecast.registry import Registry, RegistryError
from powerplane.telemetry.snapshot import Quality, Snapshot
from powerplane.topology import Topology

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
HOUR_H = np.arange(1, 61, dtype=np.int64)
REGISTRY_FILE = "registry.duckdb"
MIN_COVERAGE = 0.5
PRIOR_FACILITY_PER_JOB_W = 1.5  # prior: facility watts per job watt (node overhead and cooling on top)


def prior_model(scale_w: float) -> JobAwareModel:
    """An untrained model: job deltas times a facility factor, bands of ~3 % of ``scale_w`` growing with sqrt(h)."""
    h = np.array([*HOUR_H, 1440], dtype=np.int64)
    coef = np.zeros((h.size, len(FEATURES)))
    for f in ("end_w", "ckpt_w", "ramp_w", "queued_w", "stall_w", "service_w"):
        coef[:, FEATURES.index(f)] = PRIOR_FACILITY_PER_JOB_W
    half = 0.03 * scale_w * np.sqrt(np.minimum(h, 60) / 15.0)
    rq = np.stack([-half, np.zeros(h.size), half], axis=1)
    return JobAwareModel(h, coef, np.zeros(h.size), rq, np.zeros(4), meta={"prior": True})


def _with_10s(ahead_w: F64, now_w: F64 | float) -> F64:
    """Prepend the 10-s step, a sixth of the way from now to the 1-minute value (last axis: horizons)."""
    base = np.asarray(now_w, np.float64)[..., None]
    return np.concatenate([base + (ahead_w[..., :1] - base) / 6.0, ahead_w], axis=-1)


class _Grow:
    """A float array indexed by minute that grows as minutes arrive (NaN where nothing was seen)."""

    def __init__(self) -> None:
        self.a = np.full(1024, np.nan)

    def ensure(self, n: int) -> None:
        if n > self.a.size:
            new = np.full(max(2 * self.a.size, n), np.nan)
            new[: self.a.size] = self.a
            self.a = new


class LiveForecaster:
    """See the module docstring. ``registry_dir`` holds ``registry.duckdb``; None: the prior model only."""

    def __init__(self, site: SiteConfig, topology: Topology, registry_dir: Path | None = None) -> None:
        self.site = site
        self.topo = topology
        self.registry: Registry | None = None
        if registry_dir is not None:  # a folder holding registry.duckdb, or the .duckdb file itself
            rd = Path(registry_dir)
            self.registry = Registry(rd if rd.suffix == ".duckdb" else rd / REGISTRY_FILE)
        self.scale_w = float(site.electrical.contract_demand_kw) * 1e3
        self.model, self.version = self._load_champion()
        self.state = JobState()
        self.rejected: Counter[str] = Counter()
        self.base_min: int | None = None
        self.cur = -1  # minute being accumulated (relative to base_min)
        self.closed = -1  # last closed minute
        self._F, self._it, self._temp, self._new = _Grow(), _Grow(), _Grow(), _Grow()
        self._acc = np.zeros(3)  # sums of facility, IT, temperature this minute
        self._acc_n = np.zeros(3)
        self._job_sum = np.zeros(0)
        self._job_n = np.zeros(0)
        self._last_ok_t: float | None = None
        self.rack_power_w: F64 = np.full(topology.n_racks, np.nan)
        self.hall_power_w: F64 = np.full(topology.n_halls, np.nan)
        self.rows: list[tuple[I64, F64, int]] = []  # closed minutes' job rows (for retraining)
        self._jobsum = _Grow()  # summed job power per closed minute (the marginal IT factor of rack forecasts)
        self.gpu_job: I64 | None = None  # the GPU -> job placement (set_placement), None: unknown
        self._described = 0  # jobs of the placement's job table whose kind and size were passed on
        self._job_of_name: dict[str, int] = {}  # job table name -> id, to read the scheduler's timeline per job
        self.weather_c: Callable[[F64], F64] | None = None  # outdoor temperature forecast by time (set_weather)
        # the band's width follows the coverage its forecasts get (forecast/adapt.py)
        self.bands = BandAdapter(MODEL_HORIZONS_MIN)

    # ------------------------------------------------------------------ model

    def _load_champion(self) -> tuple[JobAwareModel, str]:
        """The registry's champion, or the prior: no registry, no champion yet, or a champion this code cannot
        read (then ``champion_problem`` says why, and the log too; re-register: ``forecast backtest --register``)."""
        self.champion_problem: str | None = None
        if self.registry is not None:
            try:
                rec, blob = self.registry.load("champion")
            except RegistryError:
                return prior_model(self.scale_w), "prior"  # no champion yet
            try:
                return JobAwareModel.from_bytes(blob), rec.version
            except (ValueError, KeyError, TypeError) as exc:
                self.champion_problem = f"champion {rec.version} cannot be loaded ({exc}); forecasting with the prior"
                log.warning("%s", self.champion_problem)
        return prior_model(self.scale_w), "prior"

    def reload(self) -> str:
        """Reload the champion (after a promotion or rollback); returns its version."""
        self.model, self.version = self._load_champion()
        self.bands = BandAdapter(MODEL_HORIZONS_MIN)  # a new model, a new calibration
        return self.version

    @property
    def model_name(self) -> str:
        return f"{NAME} {self.version}"

    # ------------------------------------------------------------------ what the runtime tells

    def set_placement(self, workload: object | None) -> None:
        """The scheduler's GPU -> job placement (``workload.gpu_job``, -1: no job) and, where the workload has a job
        table (``workload.jobs`` with ``kind``, ``n_gpus``, ``n``), what the queue declares of new jobs."""
        gj = getattr(workload, "gpu_job", None)
        self.gpu_job = np.asarray(gj, np.int64) if gj is not None and np.size(gj) == self.topo.n_gpus else None
        jobs = getattr(workload, "jobs", None)
        n = int(getattr(jobs, "n", 0) or 0)
        if jobs is not None and n > self._described and hasattr(jobs, "kind") and hasattr(jobs, "n_gpus"):
            ids = np.arange(self._described, n, dtype=np.int64)
            self.state.describe(ids, np.asarray(jobs.kind[ids], np.int64), np.asarray(jobs.n_gpus[ids], np.int64))
            names = getattr(jobs, "names", None)
            if names is not None:
                self._job_of_name.update(zip(names[self._described : n], range(self._described, n), strict=False))
            self._described = n

    def set_weather(self, outdoor_temp_c: Callable[[F64], F64] | None) -> None:
        """A forecast of outdoor temperature [C] at given times [s]; the forecaster adds the persistence of its error
        at the last closed minute (observed minus forecast) to every step ahead."""
        self.weather_c = outdoor_temp_c

    # ------------------------------------------------------------------ observe

    def observe(self, snapshot: Snapshot) -> None:
        """Fold one snapshot into the current minute (cheap: a few array additions)."""
        t = float(snapshot.t_s)
        m_abs = int(np.floor(t / STEP_S))
        if self.base_min is None:
            self.base_min = m_abs
            self.cur = 0
        m = m_abs - self.base_min
        if m < self.cur:
            self.rejected["out_of_order"] += 1
            return
        if m > self.cur:
            self._close(self.cur)
            self.cur = m
        site = snapshot.levels.get("site")
        vals = []
        for k in ("facility_power_w", "it_power_w", "outdoor_temp_c"):
            if (
                site is not None
                and k in site.values
                and (site.quality.get(k) is None or site.quality[k][0] == Quality.OK)
            ):
                vals.append(float(site.values[k][0]))
            else:
                vals.append(np.nan)
        v = np.array(vals)
        if not np.isfinite(v[0]) or v[0] < 0:
            self.rejected["no_site_power"] += 1
        else:
            self._last_ok_t = t
        ok = np.isfinite(v)
        self._acc[ok] += v[ok]
        self._acc_n[ok] += 1
        rack = snapshot.levels.get("rack")
        if rack is not None and "power_w" in rack.values and rack.values["power_w"].size == self.topo.n_racks:
            self.rack_power_w = rack.values["power_w"]
        hall = snapshot.levels.get("hall")
        if hall is not None and "it_power_w" in hall.values and hall.values["it_power_w"].size == self.topo.n_halls:
            self.hall_power_w = hall.values["it_power_w"]
        ids = np.asarray(snapshot.job_ids, np.int64)
        if ids.size:
            p = np.asarray(snapshot.job_power_w, np.float64)
            cov = (
                np.asarray(snapshot.job_coverage, np.float64)
                if snapshot.job_coverage.size == ids.size
                else np.ones(ids.size)
            )
            good = np.isfinite(p) & (p >= 0) & (ids >= 0) & (cov >= MIN_COVERAGE)
            if not np.all(good):
                self.rejected["job_power_bad_or_partial"] += int((~good).sum())
            ids, p = ids[good], p[good] / np.maximum(cov[good], 1e-9)
            if ids.size:
                need = int(ids.max()) + 1
                if need > self._job_sum.size:
                    grow = max(need, 2 * self._job_sum.size, 64)
                    self._job_sum = np.concatenate([self._job_sum, np.zeros(grow - self._job_sum.size)])
                    self._job_n = np.concatenate([self._job_n, np.zeros(grow - self._job_n.size)])
                np.add.at(self._job_sum, ids, p)
                np.add.at(self._job_n, ids, 1.0)

    def _close(self, m: int) -> None:
        for g in (self._F, self._it, self._temp, self._new):
            g.ensure(m + 2)
        means = np.where(self._acc_n > 0, self._acc / np.maximum(self._acc_n, 1), np.nan)
        self._F.a[m], self._it.a[m], self._temp.a[m] = means
        ids = np.flatnonzero(self._job_n > 0).astype(np.int64)
        p = self._job_sum[ids] / self._job_n[ids]
        first = np.ones(ids.size, bool)
        if ids.size and self.state.first_min.size:
            inside = ids < self.state.first_min.size
            first[inside] = self.state.first_min[ids[inside]] < 0
        self.state.observe(m, ids, p)
        self._new.a[m] = float(self.state.profile_w(ids[first])[0].sum()) if np.any(first) else 0.0
        self.rows.append((ids, p, m))
        self._jobsum.ensure(m + 2)
        self._jobsum.a[m] = float(p.sum())
        self._acc[:] = 0.0
        self._acc_n[:] = 0.0
        self._job_sum[:] = 0.0
        self._job_n[:] = 0.0
        self.closed = m
        self.bands.resolve(m, self._F.a)
        self._on_close(m)

    def _on_close(self, m: int) -> None:
        """Hook for subclasses (monitoring)."""

    # ------------------------------------------------------------------ forecast

    def _temp_ahead(self, i: int, h_max: int) -> F64:
        """Outdoor temperature by minute up to ``i + h_max``: observed up to ``i``, then the weather forecast plus
        the persistence of its error at ``i`` (without a forecast: observed only, so the cooling feature is 0)."""
        seen = self._temp.a[: i + 1]
        if self.weather_c is None or h_max <= 0 or not np.isfinite(seen[-1]):
            return seen
        mins = (self.base_min or 0) + np.arange(i, i + h_max + 1, dtype=np.float64)
        ahead = np.asarray(self.weather_c((mins + 0.5) * STEP_S), np.float64)
        err = float(seen[-1] - ahead[0])
        return np.concatenate([seen, ahead[1:] + (err if np.isfinite(err) else 0.0)])

    def _describe_ends(self, names: list[str], running: NDArray[np.bool_], end_s: F64) -> None:
        """The timeline's expected end of each running job it names (``name#attempt``), as that job's end minute,
        so the per-job projection (rack forecasts) removes it where the site's end feature does."""
        if not self._job_of_name or not names:
            return
        ids = np.array([self._job_of_name.get(nm.split("#")[0], -1) for nm in names], np.int64)
        ok = running & (ids >= 0) & (ids < self.state.end_min.size)
        if np.any(ok):
            self.state.end_min[ids[ok]] = end_s[ok] / STEP_S - (self.base_min or 0)

    def _features(self, i: int, h: I64, now_s: float, timeline: object | None) -> tuple[FeatureSet, Projection]:
        n = i + 1
        F = self._F.a[:n]
        filled = np.copy(F)
        ok = np.isfinite(filled)
        last = int(np.flatnonzero(ok)[-1]) if ok.any() else -1
        if last >= 0 and last < i:
            filled[last + 1 :] = filled[last]  # a gap carries the last reading (flagged stale below)
        new = np.nan_to_num(self._new.a[:n])
        cum_new = np.concatenate([[0.0], np.cumsum(new)])
        queued = np.zeros(h.size)
        x = np.zeros((1, h.size, len(FEATURES)))
        temp = self._temp_ahead(i, int(h.max()) if h.size else 0)
        tl: Any = timeline
        use_tl = tl is not None and all(hasattr(tl, a) for a in ("state", "power_w", "start_s", "end_s", "gpus"))
        if use_tl:
            running = np.asarray([s == "running" for s in tl.state], dtype=np.bool_)
            en = np.asarray(tl.end_s, np.float64)
            self._describe_ends(list(getattr(tl, "names", [])), running, en)
        pr = origin_features(x[0], self.state, i, h, filled, self._it.a[:n], temp, cum_new, queued)
        if use_tl:
            t_h = now_s + STEP_S * h
            pw = np.asarray(tl.power_w, np.float64)
            st = np.asarray(tl.start_s, np.float64)
            g = np.asarray(tl.gpus, np.float64)
            ends = running[:, None] & (en[:, None] <= t_h[None, :])
            x[0, :, FEATURES.index("end_w")] = -(pw[:, None] * ends).sum(axis=0)
            x[0, :, FEATURES.index("end_gpus")] = (g[:, None] * ends).sum(axis=0)
            starts = ~running[:, None] & (st[:, None] <= t_h[None, :]) & (en[:, None] > t_h[None, :])
            x[0, :, FEATURES.index("queued_w")] = (pw[:, None] * starts).sum(axis=0)
        stale_min = 0.0 if self._last_ok_t is None else max((now_s - self._last_ok_t) / STEP_S - 1.0, 0.0)
        if last < 0:
            stale_min = np.inf
        fs = FeatureSet(
            np.array([i]),
            h,
            x,
            np.full((1, h.size), np.nan),
            np.array([filled[i] if n else np.nan]),
            np.array([stale_min]),
            np.array([pr.fallback_w]),
        )
        return fs, pr

    def predict(self, now_s: float, h: I64, timeline: object | None = None) -> tuple[F64, F64, F64] | None:
        """P10, P50, P90 of facility power at ``now_s + 60 h`` [W], or None before the first closed minute."""
        res = self._predict(now_s, h, timeline)
        return None if res is None else res[:3]

    def _predict(self, now_s: float, h: I64, timeline: object | None) -> tuple[F64, F64, F64, Projection] | None:
        i = self.closed
        if i < 0 or not np.any(np.isfinite(self._F.a[: i + 1])):
            return None
        fs, pr = self._features(i, h, now_s, timeline)
        if not np.isfinite(fs.stale_min[0]):
            return None
        fc = self.model.predict(fs)
        p10, p90 = self.bands.apply(fc.p10_w[0], fc.p50_w[0], fc.p90_w[0], h)
        self.bands.record(i, h, p10, p90)  # scored when its targets close
        return p10, fc.p50_w[0], p90, pr

    def forecast(self, now_s: float, timeline: object | None = None) -> dict[str, Any]:
        """Site facility power over the next hour at 1-minute steps, JSON-ready (see the interface)."""
        out: dict[str, Any] = {"model": self.model_name, "t_s": [], "p10_w": [], "p50_w": [], "p90_w": []}
        if self.champion_problem:
            out["champion_problem"] = self.champion_problem
        res = self.predict(now_s, HOUR_H, timeline)
        if res is None:
            out["status"] = "no data yet"
            return out
        p10, p50, p90 = res
        out.update(
            t_s=(now_s + STEP_S * HOUR_H).tolist(),
            p10_w=p10.tolist(),
            p50_w=p50.tolist(),
            p90_w=p90.tolist(),
            stale=bool(self._last_ok_t is None or now_s - self._last_ok_t > 2 * STEP_S),
            rejected=dict(self.rejected),
        )
        return out

    def it_per_job_w(self) -> float:
        """The site's marginal IT watts per job watt, from the closed minutes' changes (1.0 before enough)."""
        n = self.closed + 1
        it, js = self._it.a[max(n - 1440, 0) : n], self._jobsum.a[max(n - 1440, 0) : n]
        return marginal_ratio(np.diff(it), np.diff(js))

    def forecast_racks(self, now_s: float, timeline: object | None = None) -> dict[str, F64] | None:
        """P10/P50/P90 of every rack at 10 s, 1 min, 15 min, 1 h and 24 h [racks, 5] (W), following the jobs on each
        rack (:mod:`powerplane.forecast.placement`; without a placement the site's change is shared by power);
        halls (IT, P50): their power now plus their racks' changes; the site's facility power. The 10-s step is a
        sixth of the way to the 1-minute forecast."""
        h = np.array([1, 15, 60, 1440], dtype=np.int64)
        res = self._predict(now_s, h, timeline)
        if res is None:
            return None
        p10, p50, p90, pr = res
        i = self.closed
        now = float(self._F.a[i]) if np.isfinite(self._F.a[i]) else float(np.nanmean(self._F.a[: i + 1]))
        it_now = float(self._it.a[i]) if np.isfinite(self._it.a[i]) else np.nan
        it_share = it_now / now if np.isfinite(it_now) and now > 0 else 1.0
        rk10, rk50, rk90 = rack_forecast(
            self.topo,
            self.rack_power_w,
            (p50 - now) * it_share,
            (p50 - p10) * it_share,
            (p90 - p50) * it_share,
            self.gpu_job,
            pr.ids,
            pr.job_delta_w,
            self.it_per_job_w(),
        )
        rack_now = np.nan_to_num(self.rack_power_w)

        hall_now = np.nan_to_num(self.hall_power_w)
        rack_p50 = _with_10s(rk50, rack_now)
        rack_delta = np.ascontiguousarray((rack_p50 - rack_now[:, None]).T)
        hall_delta = np.asarray(self.topo.rollup_sum(rack_delta, "rack", "hall"))
        return {
            "horizons_s": np.array([10.0, 60.0, 900.0, 3600.0, 86400.0]),
            "site_p10_w": _with_10s(p10, now),
            "site_p50_w": _with_10s(p50, now),
            "site_p90_w": _with_10s(p90, now),
            "hall_p50_w": hall_now[:, None] + hall_delta.T,
            "p10_w": _with_10s(rk10, rack_now),
            "p50_w": rack_p50,
            "p90_w": _with_10s(rk90, rack_now),
        }

    # ------------------------------------------------------------------ history as a run (for retraining)

    def history_run(self) -> RunData:
        """The closed minutes as a :class:`RunData` (job kinds unknown, starts = first seen)."""
        n = self.closed + 1
        ids = np.concatenate([r[0] for r in self.rows]) if self.rows else np.zeros(0, np.int64)
        pw = np.concatenate([r[1] for r in self.rows]) if self.rows else np.zeros(0)
        mins = np.concatenate([np.full(r[0].size, r[2]) for r in self.rows]) if self.rows else np.zeros(0, np.int64)
        nj = int(ids.max()) + 1 if ids.size else 0
        t0 = float((self.base_min or 0) * STEP_S)
        first = self.state.first_min[:nj].astype(np.float64) if nj else np.zeros(0)
        jobs = (
            JobInfo(
                kind=self.state.kind[:nj].copy() if nj else np.zeros(0, np.int64),
                n_gpus=self.state.n_gpus[:nj].copy() if nj else np.zeros(0, np.int64),
                submit_s=t0 + STEP_S * first,
                start_s=t0 + STEP_S * first,
                end_s=np.full(nj, np.nan),
                work_s=np.full(nj, np.inf),
            )
            if nj
            else JobInfo.empty()
        )
        return RunData(
            "live",
            t0,
            self._F.a[:n].copy(),
            self._it.a[:n].copy(),
            np.full(n, np.nan),
            self._temp.a[:n].copy(),
            jobs,
            mins.astype(np.int64),
            ids,
            pw,
        )
