"""Placement of one request on the pool's free capacity, and the fragmentation measure.

Policies:

- ``binpack``: best fit. A fractional request goes to the GPU with the least free capacity that still fits (ties:
  the node with the fewest wholly free GPUs), so partly used GPUs fill up and whole GPUs and nodes stay whole
  for gangs; whole-GPU requests go to the node with the fewest wholly free GPUs that still fits.
- ``spread``: the opposite (most free first), for jobs that want headroom (inference that may burst).
- ``firstfit``: the lowest-index GPUs or nodes that fit; the baseline.

Gangs: a request of at most one node's GPUs is placed on one node (NVLink). A larger one takes whole GPUs of
whole nodes inside one rack when a rack has room (the best-fitting rack for binpack), else spans the fewest
racks; inside the chosen racks fully free nodes are taken first and the remainder goes to the best-fitting node.

Every function works on arrays over GPUs or nodes; loops only run over the handful of nodes a gang takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from powerplane.control.scheduler.pool import GpuPool
from powerplane.control.scheduler.request import MILLI_PER_GPU, Shape

Policy = Literal["binpack", "spread", "firstfit"]
POLICIES: tuple[Policy, ...] = ("binpack", "spread", "firstfit")

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
B = NDArray[np.bool_]

_BIG = np.iinfo(np.int64).max // 4


def mem_need_mib(pool: GpuPool, shape: Shape, gpus: I64 | None = None) -> I64 | int:
    """Memory a shape takes on each GPU [MiB]: its own figure, or its share of each GPU's memory."""
    if shape.mem_mib:
        return shape.mem_mib
    need = pool.proportional_mem_mib(shape.milli)
    return need if gpus is None else need[gpus]


def multi_node(pool: GpuPool, shape: Shape) -> bool:
    """True when the shape needs more GPUs than any node of its models holds (a whole-node gang)."""
    return shape.gpus > pool.max_gpus_per_node(shape.models)


def place(
    pool: GpuPool,
    shape: Shape,
    policy: Policy = "binpack",
    free_milli: I64 | None = None,
    free_mem_mib: I64 | None = None,
) -> I64 | None:
    """GPU indices (sorted) for one request, or None when it does not fit.

    ``free_milli`` / ``free_mem_mib`` default to the pool's live state; pass other arrays to place on a
    hypothetical capacity (e.g. with preemptible jobs removed).
    """
    live = free_milli is None
    fm = pool.free_milli if free_milli is None else free_milli
    fmem = pool.free_mem_mib if free_mem_mib is None else free_mem_mib
    nwf = pool.node_whole_free if live else _node_whole_free(pool, fm)
    if shape.whole and multi_node(pool, shape):
        return _place_gang(pool, shape, policy, fm, nwf)
    if shape.whole:
        return _place_whole_in_node(pool, shape, policy, fm, nwf)
    ok = _fits_gpu(pool, shape, fm, fmem)
    if shape.gpus == 1:
        return _place_fraction_single(pool, policy, fm, nwf, ok)
    return _place_fraction_in_node(pool, shape, policy, fm, ok)


def _node_whole_free(pool: GpuPool, fm: I64) -> I64:
    return np.bincount(pool.gpu_node, weights=fm == MILLI_PER_GPU, minlength=pool.n_nodes).astype(np.int64)


def _fits_gpu(pool: GpuPool, shape: Shape, fm: I64, fmem: I64) -> B:
    ok: B = fm >= shape.milli
    if shape.mem_mib or not pool.mem_follows_compute:
        ok &= fmem >= mem_need_mib(pool, shape)
    if shape.models is not None:
        ok &= pool.model_gpu_mask(shape.models)
    return ok


def _place_fraction_single(pool: GpuPool, policy: Policy, fm: I64, nwf: I64, ok: B) -> I64 | None:
    if policy == "firstfit":
        g = int(np.argmax(ok))
        return np.array([g], dtype=np.int64) if ok[g] else None
    if not ok.any():
        return None
    score = fm * (pool.max_node_gpus + 1) + nwf[pool.gpu_node]
    if policy == "spread":
        score = -score
    g = int(np.argmin(np.where(ok, score, _BIG)))
    return np.array([g], dtype=np.int64)


def _place_whole_in_node(pool: GpuPool, shape: Shape, policy: Policy, fm: I64, nwf: I64) -> I64 | None:
    k = shape.gpus
    cand = nwf >= k
    if shape.models is not None:
        cand &= pool.model_node_mask(shape.models)
    if policy == "firstfit":
        node = int(np.argmax(cand))
        if not cand[node]:
            return None
    else:
        if not cand.any():
            return None
        # Best fit on the node's wholly free GPUs; ties go to the rack with the fewest wholly free GPUs
        # (binpack: keep empty racks empty for multi-node gangs) or the most (spread).
        rack_free = np.bincount(pool.node_rack, weights=nwf, minlength=pool.n_racks).astype(np.int64)
        score = nwf * (int(rack_free.max()) + 1) + rack_free[pool.node_rack]
        node = (
            int(np.argmin(np.where(cand, score, _BIG))) if policy == "binpack" else int(np.argmax(cand * (score + 1)))
        )
    gpus = pool.node_gpus(node)
    return gpus[fm[gpus] == MILLI_PER_GPU][:k]


def _place_fraction_in_node(pool: GpuPool, shape: Shape, policy: Policy, fm: I64, ok: B) -> I64 | None:
    k = shape.gpus
    count = np.bincount(pool.gpu_node, weights=ok, minlength=pool.n_nodes)
    cand = count >= k
    if not cand.any():
        return None
    if policy == "firstfit":
        node = int(np.argmax(cand))
    else:
        node_free = np.bincount(pool.gpu_node, weights=fm, minlength=pool.n_nodes)
        node = (
            int(np.argmin(np.where(cand, node_free, np.inf)))
            if policy == "binpack"
            else int(np.argmax(np.where(cand, node_free, -np.inf)))
        )
    gpus = pool.node_gpus(node)
    gpus = gpus[ok[gpus]]
    if policy == "binpack":
        gpus = gpus[np.argsort(fm[gpus], kind="stable")]
    elif policy == "spread":
        gpus = gpus[np.argsort(-fm[gpus], kind="stable")]
    return np.sort(gpus[:k])


def _place_gang(pool: GpuPool, shape: Shape, policy: Policy, fm: I64, nwf: I64) -> I64 | None:
    k = shape.gpus
    avail = nwf if shape.models is None else np.where(pool.model_node_mask(shape.models), nwf, 0)
    if int(avail.sum()) < k:
        return None
    if policy == "firstfit":
        cs = np.cumsum(avail)
        last = int(np.searchsorted(cs, k))
        nodes = np.flatnonzero(avail[: last + 1])
        take = avail[nodes].copy()
        take[-1] -= int(cs[last]) - k
    else:
        rack_free = np.bincount(pool.node_rack, weights=avail, minlength=pool.n_racks).astype(np.int64)
        fits = rack_free >= k
        if fits.any():
            rack_score = np.where(fits, rack_free, _BIG if policy == "binpack" else -1)
            racks = [int(np.argmin(rack_score) if policy == "binpack" else np.argmax(rack_score))]
        else:  # the fewest racks: largest first
            order = np.argsort(-rack_free, kind="stable")
            n_racks = int(np.searchsorted(np.cumsum(rack_free[order]), k)) + 1
            racks = [int(r) for r in order[:n_racks]]
        nodes_l: list[int] = []
        take_l: list[int] = []
        remaining = k
        for r in racks:
            members = np.flatnonzero((pool.node_rack == r) & (avail > 0))
            free_r = avail[members].copy()
            while remaining > 0 and free_r.size:
                fit = free_r >= remaining
                if fit.any():  # the remainder on the best-fitting node
                    i = int(np.argmin(np.where(fit, free_r, _BIG)))
                    n_take = remaining
                else:  # a fully free (largest) node
                    i = int(np.argmax(free_r))
                    n_take = int(free_r[i])
                nodes_l.append(int(members[i]))
                take_l.append(n_take)
                remaining -= n_take
                members = np.delete(members, i)
                free_r = np.delete(free_r, i)
            if remaining == 0:
                break
        nodes = np.array(nodes_l, dtype=np.int64)
        take = np.array(take_l, dtype=np.int64)
    out = []
    for node, n_take in zip(nodes, take, strict=True):
        g = pool.node_gpus(int(node))
        out.append(g[fm[g] == MILLI_PER_GPU][: int(n_take)])
    return np.sort(np.concatenate(out))


class NodeSubset:
    """The GPUs of a few nodes and capacity restricted to them, to re-test many shapes at once.

    ``free_milli`` / ``free_mem_mib`` are either over all GPUs or already restricted to ``pool.nodes_gpus(nodes)``
    (pass those ``gpus`` when known).
    """

    def __init__(self, pool: GpuPool, nodes: I64, free_milli: I64, free_mem_mib: I64, gpus: I64 | None = None) -> None:
        self.pool = pool
        self.nodes = nodes
        self.gpus = pool.nodes_gpus(nodes) if gpus is None else gpus
        full = free_milli.size == pool.n_gpus and self.gpus.size != pool.n_gpus
        self.fm = free_milli[self.gpus] if full else free_milli
        self.fmem = free_mem_mib[self.gpus] if full else free_mem_mib
        self.max_fm = int(self.fm.max()) if self.fm.size else 0
        self.simple = pool.mem_follows_compute
        self._max_whole: int | None = None

    def fits(self, shape: Shape) -> bool | None:
        """Whether a single-node shape fits on one of the nodes; None for a multi-node gang (check the pool)."""
        pool = self.pool
        if multi_node(pool, shape):
            return None
        if self.max_fm < shape.milli:
            return False
        if shape.models is None and not shape.mem_mib:
            if shape.gpus == 1 and (self.simple or shape.milli == MILLI_PER_GPU):
                return True
            if shape.milli == MILLI_PER_GPU:  # wholly free GPUs on the best node
                if self._max_whole is None:
                    local = np.repeat(np.arange(self.nodes.size), pool.node_n_gpus[self.nodes])
                    whole = np.bincount(local, weights=self.fm == MILLI_PER_GPU, minlength=self.nodes.size)
                    self._max_whole = int(whole.max())
                return self._max_whole >= shape.gpus
        ok = (self.fm >= shape.milli) & (self.fmem >= mem_need_mib(pool, shape, self.gpus))
        if shape.models is not None:
            ok &= pool.model_gpu_mask(shape.models)[self.gpus]
        if shape.gpus == 1:
            return bool(ok.any())
        local = np.repeat(np.arange(self.nodes.size), pool.node_n_gpus[self.nodes])
        return bool(np.any(np.bincount(local, weights=ok, minlength=self.nodes.size) >= shape.gpus))


def fits_on_nodes(pool: GpuPool, shape: Shape, nodes: I64, free_milli: I64, free_mem_mib: I64) -> bool | None:
    """Whether a single-node shape fits on one of ``nodes`` given the capacity arrays (over all GPUs).

    Returns None for a multi-node gang (the caller checks the whole pool).
    """
    return NodeSubset(pool, np.unique(nodes), free_milli, free_mem_mib).fits(shape)


def fragmentation_milli(
    pool: GpuPool, shapes: Sequence[Shape], popularity: Sequence[float] | F64, free_milli: I64 | None = None
) -> float:
    """Expected GPU capacity [milli] that a typical request cannot use (Weng et al., "Beware of Fragmentation",
    USENIX ATC 2023, the fragment measure of Sec. 3).

    For a target workload of shapes ``m`` with popularity ``p_m`` (summing to 1), the fragment of node ``n`` for
    shape ``m``, ``F_n(m)``, is all of the node's free milli when the node cannot host one more task of that shape
    (wrong model, or fewer than ``gpus`` GPUs with at least ``milli`` free; for a multi-node gang, no wholly free
    GPU), and otherwise the free milli on its GPUs that cannot serve the task (free below ``milli``; for whole-GPU
    shapes, every partly used GPU). The pool's fragmentation is ``sum_m p_m sum_n F_n(m)``. Memory is not a
    dimension of this measure. Down nodes show no free capacity and add nothing.

    >>> pool = GpuPool.build([2], ["H100"])
    >>> pool.allocate(np.array([0]), 600, np.array([0]))
    >>> # GPU 0 has 400 free: a 300-milli task can use it, a whole-GPU task cannot.
    >>> fragmentation_milli(pool, [Shape(1, 300, 0, None), Shape(1, 1000, 0, None)], [0.5, 0.5])
    200.0
    """
    fm = pool.free_milli if free_milli is None else free_milli
    p = np.asarray(popularity, dtype=np.float64)
    node = pool.gpu_node
    n = pool.n_nodes
    node_free = np.bincount(node, weights=fm, minlength=n)
    partial = np.where(fm < MILLI_PER_GPU, fm, 0)
    node_partial = np.bincount(node, weights=partial, minlength=n)
    nwf = np.bincount(node, weights=fm == MILLI_PER_GPU, minlength=n)
    # Single-GPU fractional shapes of any model: F(m) = sum over GPUs of free milli where free < milli.
    below = np.concatenate([[0.0], np.cumsum(np.bincount(fm, weights=fm, minlength=MILLI_PER_GPU + 1))])
    total = 0.0
    for shape, share in zip(shapes, p, strict=True):
        if share == 0:
            continue
        if shape.models is None and shape.gpus == 1:
            frag = float(below[shape.milli])  # sum of fm over fm < milli
        elif shape.milli == MILLI_PER_GPU:
            need = 1 if multi_node(pool, shape) else shape.gpus
            hosts = nwf >= need
            if shape.models is not None:
                hosts &= pool.model_node_mask(shape.models)
            frag = float(np.where(hosts, node_partial, node_free).sum())
        else:
            ok = fm >= shape.milli
            if shape.models is not None:
                ok &= pool.model_gpu_mask(shape.models)
            hosts = np.bincount(node, weights=ok, minlength=n) >= min(shape.gpus, pool.max_node_gpus)
            node_frag = np.bincount(node, weights=np.where(ok, 0, fm), minlength=n)
            frag = float(np.where(hosts, node_frag, node_free).sum())
        total += float(share) * frag
    return total
