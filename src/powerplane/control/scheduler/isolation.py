"""Taking capacity out of placement and giving it back: whole nodes (down/up) and single GPUs (cordon/uncordon).

- :func:`node_down`: a node disappeared; every job on it stops, keeps its checkpointed progress and is requeued.
- :func:`cordon_gpu`: one GPU leaves placement. The pool shows it with no free capacity, so nothing new lands on
  it: single GPUs, fractional shares, gang packing, preemption (its potential is zero) and the rebalance's growth
  all pass it by. Jobs already on it keep running until :func:`evict_gpu` moves them (stopped at their last
  checkpoint and requeued; the healer asks for that). :func:`uncordon_gpu` returns the GPU, less what jobs still
  hold there. Both are reversible and idempotent; the caller audits them (the scheduler keeps no log).

These work on the :class:`~powerplane.control.scheduler.scheduler.Scheduler`'s state the way
:mod:`.rebalance` does; the scheduler's methods of the same names call them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from powerplane.control.scheduler.job import Job
    from powerplane.control.scheduler.scheduler import Scheduler

I64 = NDArray[np.int64]


def node_index(sched: Scheduler, node: int | str) -> int:
    return node if isinstance(node, int) else sched.pool.node_names.index(node)


def _stop_and_requeue(sched: Scheduler, jobs: list[Job], now_s: float) -> list[str]:
    for job in jobs:
        sched._stop(job, now_s)
        sched._requeue(job, now_s, to_back=False)
    return [job.request.name for job in jobs]


def node_down(sched: Scheduler, node: int | str, now_s: float) -> list[str]:
    """Stop and requeue every job of the node (from its checkpoint), then hide the node; returns their names."""
    n = node_index(sched, node)
    hit = [sched.jobs[j] for j in sorted(sched._node_jobs[n])]
    sched.n_node_requeues += len(hit)
    names = _stop_and_requeue(sched, hit, now_s)
    sched.pool.set_node_up(n, False)
    reset_potential(sched, sched.pool.node_gpus(n))
    return names


def node_up(sched: Scheduler, node: int | str, now_s: float) -> None:
    """The node's capacity returns (its cordoned GPUs stay hidden)."""
    n = node_index(sched, node)
    if sched.pool.node_up[n]:
        return
    sched.pool.set_node_up(n, True)
    reset_potential(sched, sched.pool.node_gpus(n))
    sched._dirty_nodes.append(n)


def gpu_holders(sched: Scheduler, gpu: int) -> list[Job]:
    """Running jobs holding ``gpu`` (a fractional GPU may hold several), by id."""
    node = int(sched.pool.gpu_node[gpu])
    return [sched.jobs[j] for j in sorted(sched._node_jobs[node]) if np.any(sched.jobs[j].gpus == gpu)]


def _check_gpu(sched: Scheduler, gpu: int) -> int:
    g = int(gpu)
    if not 0 <= g < sched.pool.n_gpus:
        raise ValueError(f"no GPU {g} in a pool of {sched.pool.n_gpus}")
    return g


def cordon_gpu(sched: Scheduler, gpu: int, now_s: float) -> list[str]:
    """Take one GPU out of placement; returns the names of the jobs still running on it (not moved)."""
    g = _check_gpu(sched, gpu)
    if sched.pool.set_gpu_cordoned(g, True):
        reset_potential(sched, np.array([g], dtype=np.int64))
    return [job.request.name for job in gpu_holders(sched, g)]


def evict_gpu(sched: Scheduler, gpu: int, now_s: float) -> list[str]:
    """Stop the jobs holding ``gpu`` at their last checkpoint and requeue them (they are placed elsewhere while
    the GPU is cordoned); returns their names."""
    hit = gpu_holders(sched, _check_gpu(sched, gpu))
    sched.n_gpu_requeues += len(hit)
    return _stop_and_requeue(sched, hit, now_s)


def uncordon_gpu(sched: Scheduler, gpu: int, now_s: float) -> bool:
    """Return a cordoned GPU to placement (less what jobs still hold there); False when it was not cordoned."""
    g = _check_gpu(sched, gpu)
    held, held_mem = 0, 0
    for job in gpu_holders(sched, g):
        held += job.milli
        held_mem += int(job.mem_mib[np.flatnonzero(job.gpus == g)[0]])
    if not sched.pool.set_gpu_cordoned(g, False, held, held_mem):
        return False
    reset_potential(sched, np.array([g], dtype=np.int64))
    sched._dirty_nodes.append(int(sched.pool.gpu_node[g]))
    return True


def reset_potential(sched: Scheduler, gpus: I64) -> None:
    """Recompute the preemption potential of ``gpus`` from scratch: free capacity plus the preemptible allocations
    of lighter classes, zero where the GPU is down or cordoned."""
    sched._subsets.clear()
    pool = sched.pool
    avail = pool.node_up[pool.gpu_node[gpus]] & ~pool.gpu_cordoned[gpus]
    for c in sched._preemptors:
        lower = [k for k, pc in enumerate(sched.classes) if pc.weight < sched.classes[c].weight]
        rows = np.ix_(np.array(lower, dtype=np.int64), gpus)
        pm = pool.free_milli[gpus] + sched.pre_milli[rows].sum(axis=0)
        pmem = pool.free_mem_mib[gpus] + sched.pre_mem_mib[rows].sum(axis=0)
        sched.pot_milli[c][gpus] = np.where(avail, pm, 0)
        sched.pot_mem_mib[c][gpus] = np.where(avail, pmem, 0)
