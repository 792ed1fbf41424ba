"""The periodic rebalance (every 15-30 min): reclaim idle allocations, grow starved ones, restore fair share.

- Idle: a running job whose reported usage (:meth:`Scheduler.report_usage`) stayed below ``idle_threshold`` of its
  allocation for ``idle_grace_s``. A fractional allocation is shrunk to its use (at least
  ``reclaim_floor_milli``), giving the rest of the GPU back; a whole-GPU job of a preemptible class is
  checkpointed and sent to the back of the queue when other jobs wait.
- Starved: a shrunk allocation using at least ``starved_threshold`` of it grows back towards its request, as far
  as its GPUs have room.
- Fair share: a tenant below its weighted share of the allocated pool, whose job has waited ``starve_after_s``
  without fitting, reclaims room from preemptible jobs of over-share tenants in the same or lower classes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from powerplane.control.scheduler.job import StepResult
from powerplane.control.scheduler.policy import place
from powerplane.control.scheduler.preempt import choose_victims
from powerplane.control.scheduler.request import MILLI_PER_GPU

if TYPE_CHECKING:
    from powerplane.control.scheduler.job import Job
    from powerplane.control.scheduler.scheduler import Scheduler


def rebalance(sched: Scheduler, now_s: float) -> StepResult:
    """Run the rebalance, then a scheduling pass; returns what started and what was preempted."""
    cfg = sched.config
    result = StepResult()
    waiting = sched.n_queued > 0
    for job in list(sched.running.values()):
        idle = now_s - job.idle_since_s >= cfg.idle_grace_s
        if idle and job.milli < MILLI_PER_GPU:
            used = job.milli * max(job.used_share, 0.0)
            target = max(cfg.reclaim_floor_milli, math.ceil(used / 10.0) * 10)
            if target < job.milli:
                sched._resize(job, target)
        elif idle and waiting and job.preemptible:
            sched.preempt(job.request.name, now_s, to_back=True)
            result.preempted.append(job.request.name)
        elif job.used_share >= cfg.starved_threshold and job.milli < job.shape.milli:
            room = int(sched.pool.free_milli[job.gpus].min())
            target = min(job.shape.milli, job.milli + room)
            if target > job.milli:
                sched._resize(job, target)
    fair_share(sched, now_s, result)
    step = sched.schedule_step(now_s)
    result.started.extend(step.started)
    result.preempted.extend(step.preempted)
    return result


def fair_share(sched: Scheduler, now_s: float, result: StepResult) -> None:
    """Tenants below their weighted share of the allocated pool, with a job waiting longer than
    ``starve_after_s`` that does not fit, reclaim room from the preemptible jobs of over-share tenants in the same
    or lower classes (at most ``max_rebalance_preemptions`` victims per call). The starved job starts at once."""
    cfg = sched.config
    usage = {t: u for t, u in sched.tenant_usage_milli.items() if u > 0}
    waiting: dict[str, Job] = {}
    for job in sched.queued_jobs():
        if now_s - job.order_s >= cfg.starve_after_s and job.request.tenant not in waiting:
            waiting[job.request.tenant] = job
    tenants = set(usage) | set(waiting)
    total = sum(usage.values())
    if not waiting or total == 0 or len(tenants) < 2:
        return
    wsum = sum(cfg.tenant_weights.get(t, 1.0) for t in tenants)

    def excess(t: str) -> float:  # share of the allocation above the tenant's weighted share
        return usage.get(t, 0) / total - cfg.tenant_weights.get(t, 1.0) / wsum

    budget = cfg.max_rebalance_preemptions
    for tenant in sorted(waiting, key=excess):
        job = waiting[tenant]
        if excess(tenant) >= 0 or budget <= 0 or place(sched.pool, job.shape, cfg.policy) is not None:
            continue
        cands = [
            r
            for r in sched.running.values()
            if r.preemptible and r.weight <= job.weight and excess(r.request.tenant) > 0
        ]
        victims = choose_victims(sched, job, now_s, cands)
        if victims is None or len(victims) > budget:
            continue
        budget -= len(victims)
        for v in victims:
            name = sched.jobs[v].request.name
            sched.preempt(name, now_s)
            result.preempted.append(name)
        gpus = place(sched.pool, job.shape, cfg.policy)
        if gpus is not None:
            power_w = sched._power_of(job, gpus, job.shape.milli)
            if sched._power_ok(job, power_w):
                sched._start(job, gpus, now_s, power_w)
                result.started.append(job.request.name)
