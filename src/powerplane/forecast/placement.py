"""Rack and hall forecasts that follow the jobs on them, from the GPU -> job placement.

A rack's expected change is the expected change of each job on it (the job state's projection, per job), shared
over the job's GPUs and summed per rack, times the site's marginal IT watts per job watt; what the site forecast
expects beyond the jobs' own changes (arrivals, cooling, the fitted intercept) is spread over the racks by their
share of power. The racks then add up to the site's IT forecast. Bands: the site's half-widths shared by power
(the racks' errors are treated as fully correlated, which is conservative for any one rack).

Every step is one vector operation over GPUs or racks (a lookup, a bincount, a BLAS rollup): no loop over GPUs.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from powerplane.topology import Topology

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def job_delta_per_gpu(gpu_job: I64, ids: I64, job_delta_w: F64) -> F64:
    """Each GPU's share ``[H, G]`` of its job's expected change ``job_delta_w[J, H]`` (jobs ``ids``): the job's change
    over the GPUs it holds; GPUs without a job, or with a job the projection does not know, get 0.

    >>> d = job_delta_per_gpu(np.array([5, 5, -1, 7]), np.array([5, 7]), np.array([[10.0, 20.0], [3.0, 4.0]]))
    >>> d.tolist()
    [[5.0, 5.0, 0.0, 3.0], [10.0, 10.0, 0.0, 4.0]]
    """
    gj = np.asarray(gpu_job, np.int64)
    n_h = job_delta_w.shape[1] if job_delta_w.ndim == 2 else 0
    if ids.size == 0 or gj.size == 0:
        return np.zeros((n_h, gj.size))
    top = max(int(ids.max()), int(gj.max(initial=-1))) + 1
    pos = np.full(top + 1, -1, np.int64)  # pos[job + 1]: row of the job in ids (-1: unknown; index 0: no job)
    pos[ids + 1] = np.arange(ids.size)
    gpos = pos[np.clip(gj, -1, top - 1) + 1]
    held = gpos >= 0
    cnt = np.bincount(gpos[held], minlength=ids.size).astype(np.float64)
    per_gpu = job_delta_w / np.maximum(cnt, 1.0)[:, None]  # [J, H]
    out = np.zeros((n_h, gj.size))
    out[:, held] = per_gpu[gpos[held]].T
    return out


def rack_forecast(
    topo: Topology,
    rack_now_w: F64,
    site_it_delta_w: F64,
    site_lo_w: F64,
    site_hi_w: F64,
    gpu_job: I64 | None,
    ids: I64,
    job_delta_w: F64,
    it_per_job_w: float,
) -> tuple[F64, F64, F64]:
    """P10, P50, P90 of every rack ``[racks, H]`` [W] (see the module docstring). ``site_it_delta_w``: the site's
    expected IT change per horizon; ``site_lo_w``/``site_hi_w``: its P50-P10 and P90-P50 in IT watts."""
    now = np.where(np.isfinite(rack_now_w), rack_now_w, 0.0)
    total = float(now.sum())
    share = now / total if total > 0 else np.full(now.size, 1.0 / max(now.size, 1))
    n_h = site_it_delta_w.size
    if gpu_job is not None and np.asarray(gpu_job).size == topo.n_gpus and job_delta_w.size:
        per_gpu = np.ascontiguousarray(job_delta_per_gpu(gpu_job, ids, job_delta_w))
        jobs = it_per_job_w * np.asarray(topo.rollup_sum(per_gpu, "gpu", "rack"))  # [H, R]
    else:
        jobs = np.zeros((n_h, now.size))
    rest = site_it_delta_w - jobs.sum(axis=1)  # what the site expects beyond the jobs' own changes
    p50 = now[:, None] + jobs.T + np.outer(share, rest)
    return p50 - np.outer(share, site_lo_w), p50, p50 + np.outer(share, site_hi_w)


def marginal_ratio(d_it_w: F64, d_job_w: F64, prior: float = 1.0, lo: float = 0.5, hi: float = 3.0) -> float:
    """IT watts per job watt from minute-to-minute changes (least squares through 0), clipped; ``prior`` with
    fewer than 10 usable changes.

    >>> marginal_ratio(np.array([2.0, -4.0, 6.0] * 4), np.array([1.0, -2.0, 3.0] * 4))
    2.0
    """
    ok = np.isfinite(d_it_w) & np.isfinite(d_job_w)
    if ok.sum() < 10:
        return prior
    den = float(d_job_w[ok] @ d_job_w[ok])
    return float(np.clip(float(d_it_w[ok] @ d_job_w[ok]) / den, lo, hi)) if den > 0 else prior
