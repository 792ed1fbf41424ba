"""Forecasting data from `powerplane simulate` runs: 1-minute site series and per-job power, with the job table.

A run directory holds ``site.parquet`` (every step), ``job_power.parquet`` (mean power per job per record
interval, and in newer runs the work each job has left then) and ``jobs.parquet`` (one row per job).
:func:`load_run` turns them into a :class:`RunData` on a 1-minute grid: minute ``i`` covers
``[t0_s + 60 i, t0_s + 60 (i + 1))``. Minutes with no reading are NaN (a gap), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray

from powerplane.core.errors import PowerPlaneError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
STEP_S = 60.0
KINDS = ("pretrain", "finetune", "inference", "batch")


@dataclass
class JobInfo:
    """The job table, one entry per job id (row index = job id). Times [s] since the epoch, NaN when never."""

    kind: I64  # index into KINDS, -1 unknown
    n_gpus: I64
    submit_s: F64
    start_s: F64
    end_s: F64
    work_s: (
        F64  # declared work left at the job's start in the run (the scheduler's expected duration), inf for services
    )

    @property
    def n(self) -> int:
        return int(self.kind.size)

    @staticmethod
    def empty() -> JobInfo:
        z = np.zeros(0)
        return JobInfo(np.zeros(0, np.int64), np.zeros(0, np.int64), z, z.copy(), z.copy(), z.copy())


@dataclass
class RunData:
    """A run on the 1-minute grid. The job rows are (minute, job, power_w, work_left_s) sorted by minute;
    ``job_work_left_s`` is the work the job had left at the minute's end (its progress as the scheduler knows it;
    inf for services, NaN where a row has none; None: the run did not record it)."""

    name: str
    t0_s: float
    facility_w: F64
    it_w: F64
    cooling_w: F64
    outdoor_temp_c: F64
    jobs: JobInfo
    job_minute: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    job_id: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    job_power_w: F64 = field(default_factory=lambda: np.zeros(0))
    job_work_left_s: F64 | None = None

    @property
    def n(self) -> int:
        return int(self.facility_w.size)

    @property
    def t_s(self) -> F64:
        return self.t0_s + STEP_S * np.arange(self.n, dtype=np.float64)

    def minute_slices(self) -> I64:
        """``bounds[i]:bounds[i+1]`` are the job rows of minute ``i``."""
        return np.searchsorted(self.job_minute, np.arange(self.n + 1), side="left").astype(np.int64)


def minute_means(t_s: F64, values: F64, t0_s: float, n: int) -> F64:
    """Mean of ``values`` per minute since ``t0_s`` over ``n`` minutes; NaN where a minute has no finite value.

    >>> minute_means(np.array([0.0, 30.0, 61.0]), np.array([1.0, 3.0, 5.0]), 0.0, 3).tolist()
    [2.0, 5.0, nan]
    """
    idx = np.floor((t_s - t0_s) / STEP_S).astype(np.int64)
    ok = np.isfinite(values) & (idx >= 0) & (idx < n)
    s = np.bincount(idx[ok], weights=values[ok], minlength=n)
    c = np.bincount(idx[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def load_run(run_dir: Path) -> RunData:
    """Read a `powerplane simulate` output directory (see the module docstring)."""
    run_dir = Path(run_dir)
    for f in ("site.parquet", "jobs.parquet", "job_power.parquet"):
        if not (run_dir / f).exists():
            raise PowerPlaneError(f"{run_dir}: not a simulate run (missing {f})")
    site = pq.read_table(
        run_dir / "site.parquet", columns=["t_s", "facility_power_w", "it_power_w", "cooling_power_w", "outdoor_temp_c"]
    )
    t = site.column("t_s").to_numpy()
    if t.size == 0:
        raise PowerPlaneError(f"{run_dir}/site.parquet has no rows")
    t0 = float(np.floor(t[0] / STEP_S) * STEP_S)
    n = int(np.floor((t[-1] - t0) / STEP_S)) + 1
    cols = {c: minute_means(t, site.column(c).to_numpy().astype(np.float64), t0, n) for c in site.column_names[1:]}
    jt = pq.read_table(run_dir / "jobs.parquet").to_pydict()
    kind_idx = {k: i for i, k in enumerate(KINDS)}
    work_h = np.asarray(jt["work_hours"], dtype=np.float64)
    jobs = JobInfo(
        kind=np.array([kind_idx.get(k, -1) for k in jt["kind"]], dtype=np.int64),
        n_gpus=np.asarray(jt["n_gpus"], dtype=np.int64),
        submit_s=np.asarray(jt["submit_s"], dtype=np.float64),
        start_s=np.asarray(jt["start_s"], dtype=np.float64),
        end_s=np.asarray(jt["end_s"], dtype=np.float64),
        work_s=work_h * 3600.0,
    )
    jp = pq.read_table(run_dir / "job_power.parquet")
    jm = np.floor((jp.column("t_s").to_numpy() - t0) / STEP_S).astype(np.int64)
    jid = jp.column("job").to_numpy().astype(np.int64)
    jpw = jp.column("power_w").to_numpy().astype(np.float64)
    # a run from before the column: None, and the forecaster falls back to the declared work
    left = jp.column("work_left_s").to_numpy().astype(np.float64) if "work_left_s" in jp.column_names else None
    order = np.argsort(jm, kind="stable")
    return RunData(
        name=run_dir.name,
        t0_s=t0,
        facility_w=cols["facility_power_w"],
        it_w=cols["it_power_w"],
        cooling_w=cols["cooling_power_w"],
        outdoor_temp_c=cols["outdoor_temp_c"],
        jobs=jobs,
        job_minute=jm[order],
        job_id=jid[order],
        job_power_w=jpw[order],
        job_work_left_s=None if left is None else left[order],
    )
