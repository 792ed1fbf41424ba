"""Choosing whom to preempt: the cheapest set of victims that makes a job fit.

A victim's cost is ``weight x (restart_charge_gpu_s + GPU-seconds of work since its last checkpoint)``. Victim sets
are ranked by their highest weight first (the lowest classes go first), then by total cost (the jobs that lose
least). For a job that fits in one node, the nodes where it would fit once every eligible victim left are ranked
by how much must be cleared; on the best few (``preempt_candidates``) victims are evicted greedily (lowest weight,
then cheapest first) until the job fits, the set is then pruned of victims it does not need, and the best-ranked
node wins. For a gang of whole nodes, nodes are taken by cost per GPU gained. Every choice is verified on a copy
of the capacity before anyone is stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from powerplane.control.scheduler.policy import mem_need_mib, multi_node, place
from powerplane.control.scheduler.request import MILLI_PER_GPU, Shape

if TYPE_CHECKING:
    from powerplane.control.scheduler.scheduler import Job, Scheduler

I64 = NDArray[np.int64]


def victim_cost(sched: Scheduler, job: Job, now_s: float) -> float:
    """Cost of preempting a running job now (see the module docstring)."""
    lost_s = job.progress_s(now_s) - job.checkpoint_s(now_s)
    gpu_share = job.milli * int(job.gpus.size) / MILLI_PER_GPU
    return job.weight * (sched.config.restart_charge_gpu_s + lost_s * gpu_share)


def potential(sched: Scheduler, c: int, gpus: I64 | None = None) -> tuple[I64, I64]:
    """Free capacity (milli, MiB) if every preemptible job of a class weighing less than class ``c`` left, over
    all GPUs or over ``gpus`` (kept up to date by the scheduler; read only)."""
    if c not in sched.pot_milli:
        pool = sched.pool
        return (
            (pool.free_milli, pool.free_mem_mib) if gpus is None else (pool.free_milli[gpus], pool.free_mem_mib[gpus])
        )
    pm, pmem = sched.pot_milli[c], sched.pot_mem_mib[c]
    return (pm, pmem) if gpus is None else (pm[gpus], pmem[gpus])


def _potential_from(sched: Scheduler, victims: list[Job]) -> tuple[I64, I64]:
    pm = sched.pool.free_milli.copy()
    pmem = sched.pool.free_mem_mib.copy()
    for v in victims:
        pm[v.gpus] += v.milli
        pmem[v.gpus] += v.mem_mib
    if sched.pool.n_cordoned:  # a cordoned GPU gains nothing from its jobs leaving
        pm[sched.pool.gpu_cordoned] = 0
        pmem[sched.pool.gpu_cordoned] = 0
    return pm, pmem


def choose_victims(sched: Scheduler, job: Job, now_s: float, candidates: list[Job] | None = None) -> list[int] | None:
    """Ids of the cheapest running jobs to preempt so that ``job`` fits, or None when no set makes room.

    ``candidates`` defaults to every preemptible job of a class weighing less than the job's.
    """
    pool = sched.pool
    shape = job.shape
    if candidates is None:
        pm, pmem = potential(sched, job.cls)
        w = job.weight

        def eligible(v: Job) -> bool:
            return v.preemptible and v.weight < w
    else:
        pm, pmem = _potential_from(sched, candidates)
        ids = {v.id for v in candidates}

        def eligible(v: Job) -> bool:
            return v.id in ids

    if place(pool, shape, "binpack", pm, pmem) is None:
        return None
    if shape.whole and multi_node(pool, shape):
        return _gang_victims(sched, shape, now_s, pm, eligible)
    return _node_victims(sched, shape, now_s, pm, pmem, eligible)


def _node_victims(
    sched: Scheduler, shape: Shape, now_s: float, pm: I64, pmem: I64, eligible: Callable[[Job], bool]
) -> list[int] | None:
    pool = sched.pool
    fm = pool.free_milli
    ok = (pm >= shape.milli) & (pmem >= mem_need_mib(pool, shape))
    if shape.models is not None:
        ok &= pool.model_gpu_mask(shape.models)
    # GPUs still to clear on each node: the k GPUs needing the least reclaimed (approximation for ranking).
    deficit = np.where(ok, np.maximum(shape.milli - fm, 0), MILLI_PER_GPU * 2)
    count = np.bincount(pool.gpu_node, weights=ok, minlength=pool.n_nodes)
    cand = np.flatnonzero(count >= shape.gpus)
    if shape.gpus == 1:
        node_deficit = np.full(pool.n_nodes, np.inf)
        np.minimum.at(node_deficit, pool.gpu_node, deficit.astype(np.float64))
    else:
        node_deficit = np.bincount(pool.gpu_node, weights=deficit, minlength=pool.n_nodes)
    m = min(sched.config.preempt_candidates, cand.size)
    best = cand[np.argpartition(node_deficit[cand], m - 1)[:m]] if cand.size > m else cand
    choice: tuple[tuple[float, float], list[int]] | None = None
    for node in best.tolist():
        picked = _greedy_on_node(sched, shape, int(node), now_s, eligible)
        if picked is not None and (choice is None or picked[0] < choice[0]):
            choice = picked
    return None if choice is None else choice[1]


def _greedy_on_node(
    sched: Scheduler, shape: Shape, node: int, now_s: float, eligible: Callable[[Job], bool]
) -> tuple[tuple[float, float], list[int]] | None:
    """Evict the cheapest eligible jobs of one node until the shape fits there, then drop the ones it does not
    need; ((highest victim weight, total cost), victim ids) or None. A node holds a handful of GPUs: plain lists
    beat arrays here."""
    pool = sched.pool
    g = pool.node_gpus(node)
    first, size = int(g[0]), int(g.size)
    lm: list[int] = pool.free_milli[g].tolist()
    lmem: list[int] = pool.free_mem_mib[g].tolist()
    hidden: list[bool] = pool.gpu_cordoned[g].tolist() if pool.n_cordoned else [False] * size
    need_arr = mem_need_mib(pool, shape, g)
    need: list[int] = need_arr.tolist() if isinstance(need_arr, np.ndarray) else [int(need_arr)] * size
    k, m, whole = shape.gpus, shape.milli, shape.whole
    victims = [v for v in (sched.jobs[j] for j in sched._node_jobs[node]) if eligible(v)]
    cost = {v.id: victim_cost(sched, v, now_s) for v in victims}
    victims.sort(key=lambda v: (v.weight, cost[v.id]))
    spots = {v.id: list(zip(v.gpus.tolist(), v.mem_mib.tolist(), strict=True)) for v in victims}

    def fits() -> bool:
        if whole:
            return sum(1 for x in lm if x == MILLI_PER_GPU) >= k
        return sum(1 for x, y, n in zip(lm, lmem, need, strict=True) if x >= m and y >= n) >= k

    def change(v: Job, sign: int) -> None:
        for gpu, mem in spots[v.id]:
            p = gpu - first
            if 0 <= p < size and not hidden[p]:
                lm[p] += sign * v.milli
                lmem[p] += sign * mem

    chosen: list[Job] = []
    for v in victims:
        if fits():
            break
        change(v, +1)
        chosen.append(v)
    if not fits():
        return None
    for v in reversed(list(chosen)):  # prune victims the job does not need
        change(v, -1)
        if fits():
            chosen.remove(v)
        else:
            change(v, +1)
    rank = (max((v.weight for v in chosen), default=0.0), sum(cost[v.id] for v in chosen))
    return rank, [v.id for v in chosen]


def _gang_victims(
    sched: Scheduler, shape: Shape, now_s: float, pm: I64, eligible: Callable[[Job], bool]
) -> list[int] | None:
    pool = sched.pool
    pot_whole = np.bincount(pool.gpu_node, weights=pm == MILLI_PER_GPU, minlength=pool.n_nodes).astype(np.int64)
    if shape.models is not None:
        pot_whole = np.where(pool.model_node_mask(shape.models), pot_whole, 0)
    gain = pot_whole - np.minimum(pool.node_whole_free, pot_whole)
    cost = np.zeros(pool.n_nodes)
    node_victims: dict[int, list[int]] = {}
    for node in np.flatnonzero(gain > 0).tolist():
        vs = [j for j in sched._node_jobs[node] if eligible(sched.jobs[j])]
        node_victims[node] = vs
        cost[node] = sum(victim_cost(sched, sched.jobs[j], now_s) for j in vs)
    cand = np.flatnonzero(pot_whole > 0)
    order = cand[np.argsort(cost[cand] / pot_whole[cand], kind="stable")]
    last = int(np.searchsorted(np.cumsum(pot_whole[order]), shape.gpus))
    chosen: list[int] = []
    for node in order[: last + 1].tolist():
        chosen.extend(j for j in node_victims.get(node, []) if j not in chosen)
    fm, fmem = _potential_from(sched, [sched.jobs[j] for j in chosen])
    if place(pool, shape, sched.config.policy, fm, fmem) is None:
        return None
    return chosen
