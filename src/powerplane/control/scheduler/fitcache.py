"""The scheduler's "does not fit" caches: a shape that failed to fit keeps failing while capacity only shrinks.

Every release marks its nodes dirty; before the next decision each failed shape is re-tested on the dirty nodes
only (:func:`refresh_failed`). The same holds for "does not fit even after preempting every lower-class job"
(potential capacity also only grows on releases). A shape revived by a refresh can only fit on the dirty nodes it
was revived for; :func:`blocked` settles it there. :func:`subset` caches the capacity of a few nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from powerplane.control.scheduler import preempt
from powerplane.control.scheduler.policy import NodeSubset
from powerplane.control.scheduler.request import Shape

if TYPE_CHECKING:
    from powerplane.control.scheduler.scheduler import Scheduler


def blocked(sched: Scheduler, c: int, shape: Shape, can_preempt: bool) -> bool:
    """True when a shape of class ``c`` cannot start now (settling pending revivals on their nodes first)."""
    nodes = sched._revived.get(shape)
    if nodes is not None and subset(sched, nodes, -1).fits(shape) is False:
        del sched._revived[shape]
        sched._failed.add(shape)
    if shape not in sched._failed:
        return False
    if not can_preempt:
        return True
    key = (c, shape)
    nodes = sched._previved.get(key)
    if nodes is not None and subset(sched, nodes, c).fits(shape) is False:
        del sched._previved[key]
        sched._pfailed.add(key)
    return key in sched._pfailed


def refresh_failed(sched: Scheduler) -> None:
    """Re-test cached failures on the nodes whose capacity grew since the last test."""
    if not sched._dirty_nodes:
        return
    if not sched._failed and not sched._pfailed:
        sched._dirty_nodes.clear()
        return
    dirty = frozenset(sched._dirty_nodes)
    sched._dirty_nodes.clear()
    for shape, old in sched._revived.items():  # pending revivals may now also fit on these nodes
        sched._revived[shape] = old | dirty
    for key, old in sched._previved.items():
        sched._previved[key] = old | dirty
    if sched._failed:
        live = subset(sched, dirty, -1)
        keep_f: set[Shape] = set()
        for shape in sched._failed:
            fits = live.fits(shape)
            if fits is False:
                keep_f.add(shape)
            elif fits:
                sched._revived[shape] = dirty
        sched._failed = keep_f
    if sched._pfailed:
        keep: set[tuple[int, Shape]] = set()
        for c, shape in sched._pfailed:
            fits = subset(sched, dirty, c).fits(shape)
            if fits is False:
                keep.add((c, shape))
            elif fits:
                sched._previved[(c, shape)] = dirty
        sched._pfailed = keep


def subset(sched: Scheduler, nodes: frozenset[int], c: int) -> NodeSubset:
    """Capacity of a few nodes: free (``c`` = -1) or the potential of class ``c``; cached until it changes."""
    key = (nodes, c)
    hit = sched._subsets.get(key)
    if hit is None:
        pool = sched.pool
        arr = np.fromiter(sorted(nodes), dtype=np.int64, count=len(nodes))
        gpus = pool.nodes_gpus(arr)
        if c < 0:
            fm, fmem = pool.free_milli[gpus], pool.free_mem_mib[gpus]
        else:
            fm, fmem = preempt.potential(sched, c, gpus)
        hit = NodeSubset(pool, arr, fm, fmem, gpus)
        sched._subsets[key] = hit
    return hit
