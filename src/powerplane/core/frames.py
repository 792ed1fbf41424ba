"""Frames: what a source hands to telemetry each cycle. One NumPy array per metric per entity level.

A frame is raw readings, before validation; telemetry turns frames into validated snapshots with quality flags.
Metric names carry their units (``power_w``, ``temp_c``, ``energy_mj``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Frame:
    """Readings of one instant from one source.

    ``levels`` maps an entity level (gpu, node, rack, hall, site, bess) to ``{metric: array}``; every array of a
    level has one entry per entity of that level, in topology order.
    """

    t_s: float
    source: str
    levels: dict[str, dict[str, NDArray[np.generic]]] = field(default_factory=dict)

    def metric(self, level: str, name: str) -> NDArray[np.generic]:
        return self.levels[level][name]
