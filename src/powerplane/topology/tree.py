"""The physical and electrical tree as index arrays.

Entities are numbered so that every parent's children are contiguous (GPUs of a node, nodes of a rack, racks of
a row, rows of a hall). A rollup is then one ``np.add.reduceat`` over the child axis, for one snapshot or for a
block of snapshots at once; ``np.bincount`` serves arbitrary groupings such as jobs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig

Level = Literal["gpu", "node", "rack", "row", "hall", "site"]
LEVELS: tuple[Level, ...] = ("gpu", "node", "rack", "row", "hall", "site")

IntArray = NDArray[np.int64]


def _segment_starts(parent_of_child: IntArray, n_parents: int) -> IntArray:
    """First child index of each parent; requires children sorted by parent and every parent non-empty."""
    counts = np.bincount(parent_of_child, minlength=n_parents)
    if np.any(counts == 0):
        raise ValueError("every parent needs at least one child")
    starts = np.zeros(n_parents, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


@dataclass(frozen=True)
class Topology:
    """Index arrays for the whole site. Build with :meth:`from_site`."""

    site_name: str
    hall_names: list[str]
    row_names: list[str]
    rack_names: list[str]
    node_names: list[str]
    gpu_uuids: list[str]
    gpu_models: list[str]  # distinct model names, indexed by gpu_model_idx
    gpu_node: IntArray
    node_rack: IntArray
    rack_row: IntArray
    row_hall: IntArray
    gpu_model_idx: IntArray
    gpu_local_index: IntArray  # index of the GPU inside its node (NVML index)
    rack_cooling_unit: IntArray  # global cooling-unit index per rack
    cooling_unit_hall: IntArray
    hall_busbar_limit_w: NDArray[np.float64]
    _starts: dict[str, IntArray] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_site(cls, site: SiteConfig) -> Topology:
        hall_names: list[str] = []
        row_names: list[str] = []
        rack_names: list[str] = []
        node_names: list[str] = []
        gpu_node: list[NDArray[np.int64]] = []
        node_rack: list[NDArray[np.int64]] = []
        rack_row: list[NDArray[np.int64]] = []
        row_hall: list[int] = []
        gpu_model_names: list[str] = []
        node_model: list[str] = []
        rack_cooling: list[NDArray[np.int64]] = []
        cooling_hall: list[int] = []
        local_idx: list[NDArray[np.int64]] = []
        busbar: list[float] = []
        n_nodes = 0
        n_racks = 0
        n_units = 0
        for h, hall in enumerate(site.topology.halls):
            hall_names.append(hall.name)
            busbar.append(hall.busbar_limit_kw * 1e3)
            n_hall_racks = hall.rows * hall.racks_per_row
            # Cooling units serve contiguous blocks of racks.
            rack_cooling.append(n_units + (np.arange(n_hall_racks) * hall.cooling_units) // n_hall_racks)
            cooling_hall.extend([h] * hall.cooling_units)
            n_units += hall.cooling_units
            for r in range(hall.rows):
                w = len(row_names)
                row_names.append(f"{hall.name}/r{r:02d}")
                row_hall.append(h)
                model = hall.row_models[r] if hall.row_models else hall.gpu_model
                if model not in gpu_model_names:
                    gpu_model_names.append(model)
                rack_row.append(np.full(hall.racks_per_row, w, dtype=np.int64))
                for k in range(hall.racks_per_row):
                    rack_names.append(f"{hall.name}/r{r:02d}/k{k:02d}")
                    node_rack.append(np.full(hall.nodes_per_rack, n_racks, dtype=np.int64))
                    for n in range(hall.nodes_per_rack):
                        node_names.append(f"{hall.name}-r{r:02d}-k{k:02d}-n{n}")
                        node_model.append(model)
                        gpu_node.append(np.full(hall.gpus_per_node, n_nodes, dtype=np.int64))
                        local_idx.append(np.arange(hall.gpus_per_node, dtype=np.int64))
                        n_nodes += 1
                    n_racks += 1
        gpu_node_arr = np.concatenate(gpu_node)
        model_of_node = np.array([gpu_model_names.index(m) for m in node_model], dtype=np.int64)
        namespace = uuid.uuid5(uuid.NAMESPACE_DNS, f"{site.name}.powerplane")
        local = np.concatenate(local_idx)
        gpu_uuids = [
            f"GPU-{uuid.uuid5(namespace, f'{node_names[n]}/{i}')}" for n, i in zip(gpu_node_arr, local, strict=True)
        ]
        return cls(
            site_name=site.name,
            hall_names=hall_names,
            row_names=row_names,
            rack_names=rack_names,
            node_names=node_names,
            gpu_uuids=gpu_uuids,
            gpu_models=gpu_model_names,
            gpu_node=gpu_node_arr,
            node_rack=np.concatenate(node_rack),
            rack_row=np.concatenate(rack_row),
            row_hall=np.array(row_hall, dtype=np.int64),
            gpu_model_idx=model_of_node[gpu_node_arr],
            gpu_local_index=local,
            rack_cooling_unit=np.concatenate(rack_cooling),
            cooling_unit_hall=np.array(cooling_hall, dtype=np.int64),
            hall_busbar_limit_w=np.array(busbar, dtype=np.float64),
        )

    # ------------------------------------------------------------------ sizes and derived maps

    @property
    def n_gpus(self) -> int:
        return int(self.gpu_node.size)

    @property
    def n_nodes(self) -> int:
        return int(self.node_rack.size)

    @property
    def n_racks(self) -> int:
        return int(self.rack_row.size)

    @property
    def n_rows(self) -> int:
        return int(self.row_hall.size)

    @property
    def n_halls(self) -> int:
        return len(self.hall_names)

    @property
    def n_cooling_units(self) -> int:
        return int(self.cooling_unit_hall.size)

    def count(self, level: Level) -> int:
        return {
            "gpu": self.n_gpus,
            "node": self.n_nodes,
            "rack": self.n_racks,
            "row": self.n_rows,
            "hall": self.n_halls,
            "site": 1,
        }[level]

    def names(self, level: Level) -> list[str]:
        return {
            "gpu": self.gpu_uuids,
            "node": self.node_names,
            "rack": self.rack_names,
            "row": self.row_names,
            "hall": self.hall_names,
            "site": [self.site_name],
        }[level]

    def parent_index(self, child: Level, parent: Level) -> IntArray:
        """Index of the ``parent``-level ancestor of every ``child``-level entity."""
        ci, pi = LEVELS.index(child), LEVELS.index(parent)
        if pi <= ci:
            raise ValueError(f"{parent} is not above {child}")
        steps = [self.gpu_node, self.node_rack, self.rack_row, self.row_hall]
        idx = np.arange(self.count(child), dtype=np.int64)
        for k in range(ci, pi):
            if LEVELS[k + 1] == "site":
                return np.zeros(self.count(child), dtype=np.int64)
            idx = steps[k][idx]
        return idx

    def segment_starts(self, child: Level, parent: Level) -> IntArray:
        """Start offsets of each parent's contiguous block of children (for ``np.add.reduceat``)."""
        key = f"{child}>{parent}"
        if key not in self._starts:
            self._starts[key] = _segment_starts(self.parent_index(child, parent), self.count(parent))
        return self._starts[key]

    def parent_index_cached(self, child: Level, parent: Level) -> IntArray:
        """:meth:`parent_index`, computed once per pair (do not modify the returned array)."""
        key = f"{child}>{parent}#p"
        if key not in self._starts:
            self._starts[key] = self.parent_index(child, parent)
        return self._starts[key]

    def child_counts(self, child: Level, parent: Level) -> NDArray[np.float64]:
        """Number of ``child``-level entities under each ``parent`` (cached)."""
        key = f"{child}>{parent}#n"
        if key not in self._starts:
            self._starts[key] = np.bincount(self.parent_index(child, parent), minlength=self.count(parent))
        return self._starts[key].astype(np.float64)

    def uniform_fanout(self, child: Level, parent: Level) -> int:
        """Children per parent when every parent has the same number, else 0."""
        key = f"{child}>{parent}#k"
        if key not in self._starts:
            counts = np.bincount(self.parent_index(child, parent), minlength=self.count(parent))
            self._starts[key] = np.array([counts[0] if np.all(counts == counts[0]) else 0])
        return int(self._starts[key][0])

    def rollup_sum(self, values: NDArray[np.floating], child: Level, parent: Level) -> NDArray[np.floating]:
        """Sum ``values`` (last axis over ``child`` entities) up to ``parent``; works on [..., n_child] blocks.

        With a uniform fan-out the sum is a BLAS matrix-vector product over a reshaped view (about 10x faster
        than ``np.add.reduceat`` on short segments); otherwise ``reduceat`` over the contiguous segments.
        """
        if parent == "site":
            return values.sum(axis=-1)
        k = self.uniform_fanout(child, parent)
        if k and values.dtype.kind == "f" and values.flags.c_contiguous:
            ones = np.ones(k, dtype=values.dtype)
            return (values.reshape(-1, k) @ ones).reshape(*values.shape[:-1], -1)
        return np.add.reduceat(values, self.segment_starts(child, parent), axis=-1)

    def rollup_max(self, values: NDArray[np.floating], child: Level, parent: Level) -> NDArray[np.floating]:
        if parent == "site":
            return values.max(axis=-1)
        return np.maximum.reduceat(values, self.segment_starts(child, parent), axis=-1)
