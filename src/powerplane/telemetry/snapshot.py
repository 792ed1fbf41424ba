"""The validated, rolled-up picture of one cycle: the single source of truth for "now".

A snapshot holds, per entity level, one float64 array per metric and one uint8 quality array per metric
(``Quality``), plus the rollups of every level up the tree with their coverage, per-job power and energy, and
the count of rejected values by reason. Bad values stay in ``values`` for inspection but are flagged and
excluded from every rollup; nothing is silently zeroed or averaged in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
U8 = NDArray[np.uint8]


class Quality(IntEnum):
    OK = 0
    STALE = 1  # the source stopped updating this entity
    MISSING = 2  # no reading this cycle
    INVALID = 3  # a reading that failed validation


QUALITY_NAMES = {q: q.name.lower() for q in Quality}


@dataclass
class LevelData:
    """Readings of one entity level: ``values[metric]`` and ``quality[metric]``, each one entry per entity."""

    values: dict[str, F64] = field(default_factory=dict)
    quality: dict[str, U8] = field(default_factory=dict)
    # When set, ``values``/``quality`` are row views of these [metrics, entities] blocks (rows in ``names`` order).
    block: F64 | None = None
    qblock: U8 | None = None
    names: tuple[str, ...] = ()

    def ok(self, metric: str) -> NDArray[np.bool_]:
        return np.asarray(self.quality[metric] == Quality.OK)


@dataclass
class Rollup:
    """A metric rolled up to one level: sum, mean and max over children that report, and coverage.

    ``coverage`` is the share of children (GPUs for GPU metrics) whose value is OK, in [0, 1]; ``count`` how many.
    A parent with no reporting child has NaN sum, mean and max.
    """

    sum: F64
    mean: F64
    max: F64
    coverage: F64
    count: NDArray[np.int64]


@dataclass
class Snapshot:
    t_s: float
    seq: int
    source: str
    levels: dict[str, LevelData]
    rollups: dict[str, Mapping[str, Rollup]]  # rollups[parent_level]["gpu.power_w" | "node.power_w" | ...]
    job_ids: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    job_power_w: F64 = field(default_factory=lambda: np.zeros(0))
    job_coverage: F64 = field(default_factory=lambda: np.zeros(0))
    job_energy_kwh: F64 = field(default_factory=lambda: np.zeros(0))  # cumulative since tracking began
    job_cost: F64 = field(default_factory=lambda: np.zeros(0))  # cumulative, in the tariff's currency
    gpu_energy_kwh: F64 = field(default_factory=lambda: np.zeros(0))  # cumulative per GPU
    rejected: Counter[str] = field(default_factory=Counter)  # this cycle, by reason
    rejected_total: Counter[str] = field(default_factory=Counter)  # since start, by reason

    def value(self, level: str, metric: str) -> F64:
        return self.levels[level].values[metric]
