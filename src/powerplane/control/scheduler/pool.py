"""The GPU pool as arrays: free compute (milli) and memory (MiB) of every GPU, with node and rack indices.

GPUs of a node are contiguous and every node holds one model, as in :class:`powerplane.topology.Topology`. The
pool knows nothing of jobs: it only adds and subtracts capacity, keeps the per-node count of wholly free GPUs up
to date incrementally (so a whole-GPU placement looks at nodes, not GPUs) and refuses any change that would
over-allocate a GPU.

Isolation: a down node (:meth:`GpuPool.set_node_up`) and a cordoned GPU (:meth:`GpuPool.set_gpu_cordoned`, the
boolean mask ``gpu_cordoned[G]``) show no free capacity, so every placement (single GPUs, fractional shares, gangs)
avoids them without a test of its own; what a job still running there releases stays hidden until the node comes
back up or the GPU is uncordoned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from powerplane.control.scheduler.request import MILLI_PER_GPU
from powerplane.physics.gpu_power import GPU_PROFILES

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
B = NDArray[np.bool_]

# Models the physics profiles do not cover: (vendor, memory [MiB], board power at full use [W]). Datasheet TDPs
# (P100 SXM 300 W / PCIe 250 W, V100 300 W, T4 70 W, A10 150 W, A100 400 W, MI250X 560 W, Gaudi2 600 W);
# G2/G3 are unnamed models of the Alibaba trace: 32 GiB and 300 W are *estimates*.
OTHER_MODELS: dict[str, tuple[str, int, float]] = {
    "P100": ("NVIDIA", 16 * 1024, 250.0),
    "V100M16": ("NVIDIA", 16 * 1024, 300.0),
    "V100M32": ("NVIDIA", 32 * 1024, 300.0),
    "T4": ("NVIDIA", 16 * 1024, 70.0),
    "A10": ("NVIDIA", 24 * 1024, 150.0),
    "A100": ("NVIDIA", 80 * 1024, 400.0),
    "MI250X": ("AMD", 128 * 1024, 560.0),
    "Gaudi2": ("Intel", 96 * 1024, 600.0),
    "G2": ("unknown", 32 * 1024, 300.0),
    "G3": ("unknown", 32 * 1024, 300.0),
}
DEFAULT_MODEL = ("unknown", 32 * 1024, 300.0)


def model_facts(model: str) -> tuple[str, int, float]:
    """(vendor, memory [MiB], power at full use [W]) of a GPU model; unknown models get :data:`DEFAULT_MODEL`.

    >>> model_facts("H100")
    ('NVIDIA', 81920, 590.0)
    """
    if model in GPU_PROFILES:
        p = GPU_PROFILES[model]
        return p.vendor, int(p.memory_gib * 1024), float(p.peak_w)
    return OTHER_MODELS.get(model, DEFAULT_MODEL)


@dataclass
class GpuPool:
    """Every GPU of the site in one pool. Build with :meth:`build`, :meth:`from_topology` or
    :meth:`from_node_list`.

    Structure (fixed): ``gpu_node[G]``, ``node_rack[N]``, ``node_first_gpu[N]``, ``node_n_gpus[N]``,
    ``gpu_model_idx[G]`` into ``models`` (with ``vendors``), ``mem_mib_capacity[G]``, ``draw_w[G]`` (board power at
    full use, for admission estimates). State: ``free_milli[G]`` (0..1000), ``free_mem_mib[G]``, ``node_up[N]`` and
    ``node_whole_free[N]`` (wholly free GPUs per up node, kept incrementally), ``gpu_cordoned[G]``. A down node
    and a cordoned GPU show no free capacity.
    """

    node_names: list[str]
    models: list[str]
    vendors: list[str]
    gpu_node: I64
    node_rack: I64
    node_first_gpu: I64
    node_n_gpus: I64
    gpu_model_idx: I64
    mem_mib_capacity: I64
    draw_w: F64
    free_milli: I64 = field(init=False)
    free_mem_mib: I64 = field(init=False)
    node_up: B = field(init=False)
    node_whole_free: I64 = field(init=False)
    gpu_cordoned: B = field(init=False)
    n_cordoned: int = field(init=False, default=0)
    allocated_milli: int = field(init=False, default=0)
    explicit_mem_allocations: int = field(init=False, default=0)
    _model_masks: dict[tuple[int, ...] | None, tuple[B, B]] = field(init=False, default_factory=dict, repr=False)
    _per_node: dict[tuple[int, ...] | None, int] = field(init=False, default_factory=dict, repr=False)
    _prop_mem: dict[int, I64] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        starts = np.concatenate([[0], np.cumsum(self.node_n_gpus)[:-1]]).astype(np.int64)
        if not np.array_equal(starts, self.node_first_gpu) or self.gpu_node.size != int(self.node_n_gpus.sum()):
            raise ValueError("GPUs of a node must be contiguous and counted by node_n_gpus")
        node_model = self.gpu_model_idx[self.node_first_gpu]
        if not np.array_equal(node_model[self.gpu_node], self.gpu_model_idx):
            raise ValueError("every node must hold GPUs of one model")
        self.node_model_idx: I64 = node_model
        self.n_racks = int(self.node_rack.max()) + 1 if self.node_rack.size else 0
        self.max_node_gpus = int(self.node_n_gpus.max())
        self.free_milli = np.full(self.n_gpus, MILLI_PER_GPU, dtype=np.int64)
        self.free_mem_mib = self.mem_mib_capacity.copy()
        self.node_up = np.ones(self.n_nodes, dtype=bool)
        self.node_whole_free = self.node_n_gpus.copy()
        self.gpu_cordoned = np.zeros(self.n_gpus, dtype=bool)

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        node_gpus: Sequence[int] | I64,
        node_models: Sequence[str],
        node_rack: Sequence[int] | I64 | None = None,
        node_names: Sequence[str] | None = None,
        nodes_per_rack: int = 4,
    ) -> GpuPool:
        """A pool from per-node GPU counts and models; racks of ``nodes_per_rack`` consecutive nodes unless given.

        >>> pool = GpuPool.build([8, 8, 2], ["H100", "H100", "MI300X"], nodes_per_rack=2)
        >>> pool.n_gpus, pool.n_racks, pool.vendors
        (18, 2, ['NVIDIA', 'AMD'])
        """
        counts = np.asarray(node_gpus, dtype=np.int64)
        if counts.size == 0 or np.any(counts < 1):
            raise ValueError("a pool needs nodes with at least one GPU each")
        if len(node_models) != counts.size:
            raise ValueError("one model per node")
        models: list[str] = []
        for m in node_models:
            if m not in models:
                models.append(m)
        facts = [model_facts(m) for m in models]
        node_model = np.array([models.index(m) for m in node_models], dtype=np.int64)
        gpu_node = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        gpu_model = node_model[gpu_node]
        rack = (
            np.arange(counts.size, dtype=np.int64) // max(nodes_per_rack, 1)
            if node_rack is None
            else np.asarray(node_rack, dtype=np.int64)
        )
        names = list(node_names) if node_names is not None else [f"node-{i:05d}" for i in range(counts.size)]
        return cls(
            node_names=names,
            models=models,
            vendors=[f[0] for f in facts],
            gpu_node=gpu_node,
            node_rack=rack,
            node_first_gpu=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
            node_n_gpus=counts,
            gpu_model_idx=gpu_model,
            mem_mib_capacity=np.array([f[1] for f in facts], dtype=np.int64)[gpu_model],
            draw_w=np.array([f[2] for f in facts], dtype=np.float64)[gpu_model],
        )

    @classmethod
    def from_topology(cls, topo: object) -> GpuPool:
        """The pool of a site :class:`powerplane.topology.Topology` (same GPU and node order)."""
        from powerplane.topology import Topology

        assert isinstance(topo, Topology)
        counts = np.bincount(topo.gpu_node, minlength=topo.n_nodes)
        node_model = topo.gpu_model_idx[np.concatenate([[0], np.cumsum(counts)[:-1]])]
        return cls.build(
            counts,
            [topo.gpu_models[i] for i in node_model],
            node_rack=topo.node_rack,
            node_names=topo.node_names,
        )

    @classmethod
    def from_node_list(cls, path: str | Path | pd.DataFrame, nodes_per_rack: int = 4, scale: float = 1.0) -> GpuPool:
        """A pool shaped like an Alibaba openb node list (columns ``sn``, ``gpu``, ``model``); nodes without GPUs
        are left out. Racks group ``nodes_per_rack`` consecutive nodes (the trace has no racks).

        ``scale`` in (0, 1] keeps that share of the nodes of every (model, GPUs per node) group, evenly spread
        through the group and at least one per group, so the model and node-size mix stays that of the list.
        """
        df = path if isinstance(path, pd.DataFrame) else pd.read_csv(path)
        df = df[df["gpu"] > 0]
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        if scale < 1.0:
            keep = np.zeros(len(df), dtype=bool)
            for _, rows in df.groupby(["model", "gpu"], sort=False).indices.items():
                n_keep = max(1, round(scale * len(rows)))
                keep[rows[np.floor(np.arange(n_keep) * len(rows) / n_keep).astype(np.int64)]] = True
            df = df[keep]
        return cls.build(
            df["gpu"].to_numpy(dtype=np.int64),
            df["model"].astype(str).tolist(),
            node_names=df["sn"].astype(str).tolist(),
            nodes_per_rack=nodes_per_rack,
        )

    # ------------------------------------------------------------------ sizes and masks

    @property
    def n_gpus(self) -> int:
        return int(self.gpu_node.size)

    @property
    def n_nodes(self) -> int:
        return int(self.node_rack.size)

    @property
    def total_milli(self) -> int:
        return self.n_gpus * MILLI_PER_GPU

    def model_gpu_mask(self, models: tuple[int, ...] | None) -> B:
        """GPUs of the accepted models (cached; do not modify)."""
        return self._masks(models)[0]

    def model_node_mask(self, models: tuple[int, ...] | None) -> B:
        """Nodes of the accepted models (cached; do not modify)."""
        return self._masks(models)[1]

    def _masks(self, models: tuple[int, ...] | None) -> tuple[B, B]:
        hit = self._model_masks.get(models)
        if hit is None:
            if models is None:
                hit = (np.ones(self.n_gpus, dtype=bool), np.ones(self.n_nodes, dtype=bool))
            else:
                hit = (np.isin(self.gpu_model_idx, models), np.isin(self.node_model_idx, models))
            self._model_masks[models] = hit
        return hit

    def max_gpus_per_node(self, models: tuple[int, ...] | None) -> int:
        """Most GPUs one node of the accepted models holds (cached)."""
        hit = self._per_node.get(models)
        if hit is None:
            hit = int(self.node_n_gpus[self.model_node_mask(models)].max())
            self._per_node[models] = hit
        return hit

    def proportional_mem_mib(self, milli: int) -> I64:
        """Memory [MiB] a share of ``milli`` takes on each GPU when memory follows compute (cached; read only)."""
        hit = self._prop_mem.get(milli)
        if hit is None:
            hit = self.mem_mib_capacity * milli // MILLI_PER_GPU
            hit.setflags(write=False)
            self._prop_mem[milli] = hit
        return hit

    def node_gpus(self, node: int) -> I64:
        """GPU indices of one node."""
        first = int(self.node_first_gpu[node])
        return np.arange(first, first + int(self.node_n_gpus[node]), dtype=np.int64)

    def nodes_gpus(self, nodes: I64) -> I64:
        """GPU indices of several nodes, node by node."""
        if nodes.size == 1:
            first = int(self.node_first_gpu[nodes[0]])
            return np.arange(first, first + int(self.node_n_gpus[nodes[0]]), dtype=np.int64)
        if nodes.size == 0:
            return np.zeros(0, dtype=np.int64)
        counts = self.node_n_gpus[nodes]
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.asarray(np.repeat(self.node_first_gpu[nodes], counts) + offsets, dtype=np.int64)

    # ------------------------------------------------------------------ state changes

    @property
    def mem_follows_compute(self) -> bool:
        """True while every allocation takes memory in proportion to its compute share: then a GPU with
        ``milli`` free also has that share of its memory free, and placement may skip the memory test."""
        return self.explicit_mem_allocations == 0

    def allocate(self, gpus: I64, milli: int, mem_mib: I64, explicit_mem: bool = False) -> None:
        """Take ``milli`` and ``mem_mib[i]`` from each of ``gpus`` (distinct). Raises if any would go negative.

        ``explicit_mem``: the memory is the job's own figure, not its compute share of each GPU's memory.
        """
        if gpus.size == 1:  # the common case, in scalars
            g, mem = int(gpus[0]), int(mem_mib[0])
            fm1 = int(self.free_milli[g])
            if fm1 < milli or int(self.free_mem_mib[g]) < mem:
                raise ValueError("over-allocation refused")
            self.free_milli[g] = fm1 - milli
            self.free_mem_mib[g] -= mem
            self.allocated_milli += milli
            self.explicit_mem_allocations += int(explicit_mem)
            if milli > 0 and fm1 == MILLI_PER_GPU:
                self.node_whole_free[self.gpu_node[g]] -= 1
            return
        fm = self.free_milli[gpus]
        if np.any(fm < milli) or np.any(self.free_mem_mib[gpus] < mem_mib):
            raise ValueError("over-allocation refused")
        self.free_milli[gpus] = fm - milli
        self.free_mem_mib[gpus] -= mem_mib
        self.allocated_milli += milli * int(gpus.size)
        self.explicit_mem_allocations += int(explicit_mem)
        if milli > 0:
            lost = fm == MILLI_PER_GPU
            if lost.any():
                np.subtract.at(self.node_whole_free, self.gpu_node[gpus[lost]], 1)

    def release(self, gpus: I64, milli: int, mem_mib: I64, explicit_mem: bool = False) -> None:
        """Give back what :meth:`allocate` took (also on a down node or a cordoned GPU, whose capacity stays
        hidden)."""
        self.allocated_milli -= milli * int(gpus.size)
        self.explicit_mem_allocations -= int(explicit_mem)
        if gpus.size == 1:  # the common case, in scalars
            one = int(gpus[0])
            node = self.gpu_node[one]
            if not self.node_up[node] or (self.n_cordoned and self.gpu_cordoned[one]):
                return
            fm1 = int(self.free_milli[one]) + milli
            mem1 = int(self.free_mem_mib[one]) + int(mem_mib[0])
            if fm1 > MILLI_PER_GPU or mem1 > self.mem_mib_capacity[one]:
                raise ValueError("release of capacity that was never allocated")
            self.free_milli[one] = fm1
            self.free_mem_mib[one] = mem1
            if milli > 0 and fm1 == MILLI_PER_GPU:
                self.node_whole_free[node] += 1
            return
        up = self.node_up[self.gpu_node[gpus]]
        if self.n_cordoned:
            up &= ~self.gpu_cordoned[gpus]
        g = gpus if up.all() else gpus[up]
        if g.size == 0:
            return
        fm = self.free_milli[g] + milli
        fmem = self.free_mem_mib[g] + (mem_mib if g is gpus else mem_mib[up])
        if np.any(fm > MILLI_PER_GPU) or np.any(fmem > self.mem_mib_capacity[g]):
            raise ValueError("release of capacity that was never allocated")
        self.free_milli[g] = fm
        self.free_mem_mib[g] = fmem
        if milli > 0:
            gained = fm == MILLI_PER_GPU
            if gained.any():
                np.add.at(self.node_whole_free, self.gpu_node[g[gained]], 1)

    def set_node_up(self, node: int, up: bool, held_milli: I64 | None = None, held_mem_mib: I64 | None = None) -> None:
        """Hide (down) or restore (up) a node's capacity. Restoring subtracts what jobs still hold there."""
        gpus = self.node_gpus(node)
        if not up:
            self.node_up[node] = False
            self.free_milli[gpus] = 0
            self.free_mem_mib[gpus] = 0
            self.node_whole_free[node] = 0
            return
        if self.node_up[node]:
            return
        self.node_up[node] = True
        held = np.zeros(gpus.size, np.int64) if held_milli is None else held_milli
        held_mem = np.zeros(gpus.size, np.int64) if held_mem_mib is None else held_mem_mib
        self.free_milli[gpus] = MILLI_PER_GPU - held
        self.free_mem_mib[gpus] = self.mem_mib_capacity[gpus] - held_mem
        if self.n_cordoned:  # cordoned GPUs of the node stay hidden
            hidden = gpus[self.gpu_cordoned[gpus]]
            self.free_milli[hidden] = 0
            self.free_mem_mib[hidden] = 0
        self.node_whole_free[node] = int(np.count_nonzero(self.free_milli[gpus] == MILLI_PER_GPU))

    def set_gpu_cordoned(self, gpu: int, cordoned: bool, held_milli: int = 0, held_mem_mib: int = 0) -> bool:
        """Cordon (hide) or uncordon (restore) one GPU's capacity; returns False when nothing changed.

        Uncordoning subtracts what jobs still hold on the GPU (``held_milli``, ``held_mem_mib``); on a down node
        only the mask changes (the node's return restores the capacity).
        """
        g = int(gpu)
        if not 0 <= g < self.n_gpus:
            raise ValueError(f"no GPU {g} in a pool of {self.n_gpus}")
        if bool(self.gpu_cordoned[g]) == cordoned:
            return False
        node = int(self.gpu_node[g])
        self.gpu_cordoned[g] = cordoned
        self.n_cordoned += 1 if cordoned else -1
        if not self.node_up[node]:
            return True
        if cordoned:
            if self.free_milli[g] == MILLI_PER_GPU:
                self.node_whole_free[node] -= 1
            self.free_milli[g] = 0
            self.free_mem_mib[g] = 0
            return True
        if not (0 <= held_milli <= MILLI_PER_GPU and 0 <= held_mem_mib <= self.mem_mib_capacity[g]):
            raise ValueError(f"held capacity {held_milli} milli / {held_mem_mib} MiB out of range on GPU {g}")
        self.free_milli[g] = MILLI_PER_GPU - held_milli
        self.free_mem_mib[g] = int(self.mem_mib_capacity[g]) - held_mem_mib
        if held_milli == 0:
            self.node_whole_free[node] += 1
        return True

    def available_gpus(self) -> B:
        """GPUs that may take work: on an up node and not cordoned (a fresh mask)."""
        return np.repeat(self.node_up, self.node_n_gpus) & ~self.gpu_cordoned
