"""The queue as the forecaster sees it: expected start and end of every queued and running job.

Running jobs end after their remaining expected duration. Queued jobs are projected in scheduling order on the
pool's *aggregate* free capacity and the power headroom: each starts when enough GPU-milli (of any GPU) and watts
are free, as running and projected jobs end; a deferrable job also waits for the next cheap or green window
(or its forced start). The projection ignores fragmentation, model constraints and backfill, so it is an estimate
of when, not where; jobs larger than the pool never start (inf).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from powerplane.control.scheduler.request import MILLI_PER_GPU

if TYPE_CHECKING:
    from powerplane.control.scheduler.scheduler import Scheduler

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class Timeline:
    """Columns, one row per job: name, state (queued/running), priority class, tenant, GPUs, milli per GPU,
    expected power [W], expected start and end [s] (inf when never)."""

    names: list[str]
    state: list[str]
    priority: list[str]
    tenant: list[str]
    gpus: I64
    milli: I64
    power_w: F64
    start_s: F64
    end_s: F64

    def __len__(self) -> int:
        return len(self.names)

    def to_records(self) -> list[dict[str, Any]]:
        return [
            {
                "name": self.names[i],
                "state": self.state[i],
                "priority": self.priority[i],
                "tenant": self.tenant[i],
                "gpus": int(self.gpus[i]),
                "milli": int(self.milli[i]),
                "power_w": float(self.power_w[i]),
                "start_s": float(self.start_s[i]),
                "end_s": float(self.end_s[i]),
            }
            for i in range(len(self))
        ]

    def power_profile_w(self, t_s: F64) -> F64:
        """Expected draw of the scheduled jobs at times ``t_s`` [W] (each job's power over [start, end)).

        >>> tl = Timeline(["a"], ["running"], ["core"], ["t"], np.array([1]), np.array([1000]),
        ...               np.array([500.0]), np.array([0.0]), np.array([10.0]))
        >>> tl.power_profile_w(np.array([-1.0, 0.0, 9.9, 10.0])).tolist()
        [0.0, 500.0, 500.0, 0.0]
        """
        t = np.asarray(t_s, dtype=np.float64)
        order_s = np.argsort(self.start_s, kind="stable")
        order_e = np.argsort(self.end_s, kind="stable")
        cum_s = np.concatenate([[0.0], np.cumsum(self.power_w[order_s])])
        cum_e = np.concatenate([[0.0], np.cumsum(self.power_w[order_e])])
        started = cum_s[np.searchsorted(self.start_s[order_s], t, side="right")]
        ended = cum_e[np.searchsorted(self.end_s[order_e], t, side="right")]
        return np.asarray(started - ended)


def project(sched: Scheduler, now_s: float) -> Timeline:
    """Expected timeline of a scheduler's jobs at ``now_s`` (see the module docstring)."""
    pool = sched.pool
    names: list[str] = []
    state: list[str] = []
    prio: list[str] = []
    tenant: list[str] = []
    gpus: list[int] = []
    milli: list[int] = []
    power: list[float] = []
    start: list[float] = []
    end: list[float] = []

    def row(job: Any, st: str, m: int, p: float, s: float, e: float) -> None:
        names.append(job.request.name)
        state.append(st)
        prio.append(sched.classes[job.cls].name)
        tenant.append(job.request.tenant)
        gpus.append(job.shape.gpus)
        milli.append(m)
        power.append(p)
        start.append(s)
        end.append(e)

    releases: list[tuple[float, int, float]] = []
    for job in sched.running.values():
        e = now_s + max(job.request.est_duration_s - job.progress_s(now_s), 0.0)
        row(job, "running", job.milli, job.power_w, job.run_start_s, e)
        releases.append((e, job.milli * int(job.gpus.size), job.power_w))
    heapq.heapify(releases)
    capacity = int(pool.available_gpus().sum()) * MILLI_PER_GPU
    free = int(pool.free_milli.sum())
    headroom = sched.budget_w - sched.committed_w
    mean_draw = {}
    t = now_s
    for job in sched.queued_jobs():
        need = job.shape.total_milli
        models = job.shape.models
        if models not in mean_draw:
            mean_draw[models] = float(pool.draw_w[pool.model_gpu_mask(models)].mean())
        p = float(job.request.power_w) if job.request.power_w is not None else mean_draw[models] * need / 1000
        exceed = sched.classes[job.cls].may_exceed_power_budget
        while (free < need or (p > headroom and not exceed)) and releases:
            e, m, pw = heapq.heappop(releases)
            t = max(t, e)
            free += m
            headroom += pw
        if need > capacity or free < need or (p > headroom and not exceed):
            row(job, "queued", job.shape.milli, p, math.inf, math.inf)
            continue
        s = t
        if job.deferred:
            s = max(s, min(sched.next_cheap_s(s), job.force_at_s))
        e = s + max(job.request.est_duration_s - job.work_done_s, 0.0)
        row(job, "queued", job.shape.milli, p, s, e)
        free -= need
        headroom -= p
        heapq.heappush(releases, (e, need, p))
    return Timeline(
        names=names,
        state=state,
        priority=prio,
        tenant=tenant,
        gpus=np.array(gpus, dtype=np.int64),
        milli=np.array(milli, dtype=np.int64),
        power_w=np.array(power, dtype=np.float64),
        start_s=np.array(start, dtype=np.float64),
        end_s=np.array(end, dtype=np.float64),
    )
