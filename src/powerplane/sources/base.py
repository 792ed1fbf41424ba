"""The seam between hardware and telemetry: a :class:`Source` hands out one :class:`~powerplane.core.frames.Frame`
per read, laid out over its :class:`~powerplane.topology.Topology`.

Every adapter (twin, NVML, DCGM, replay) shares this interface, so the runtime cannot tell them apart. A source
maps its vendor's errors onto :class:`~powerplane.core.errors.SourceError` at the edge (STYLE.md, zeus).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from powerplane.core.frames import Frame
from powerplane.topology.tree import Topology

if TYPE_CHECKING:
    from powerplane.twin.twin import Twin


@runtime_checkable
class Source(Protocol):
    """Something that produces frames over a fixed topology.

    ``read`` returns the readings of one instant (raising :class:`SourceError` when it cannot produce any at all;
    a single unreadable value is NaN in its array instead, for telemetry to flag as missing). ``close`` releases
    the hardware or files; it is safe to call twice.
    """

    @property
    def topology(self) -> Topology: ...

    @property
    def name(self) -> str: ...

    def read(self) -> Frame: ...

    def close(self) -> None: ...


class TwinSource:
    """The digital twin as a :class:`Source`: each read advances it by ``steps_per_read`` steps.

    >>> from powerplane.config.loader import load_scenario
    >>> from powerplane.twin.twin import Twin
    >>> site, path = load_scenario("small")
    >>> src = TwinSource(Twin(site, path, dt_s=1.0), steps_per_read=2)
    >>> t0 = src.twin.now_s
    >>> frame = src.read()
    >>> frame.t_s - t0, frame.levels["gpu"]["power_w"].shape
    (2.0, (256,))
    """

    name = "twin"

    def __init__(self, twin: Twin, steps_per_read: int = 1) -> None:
        if steps_per_read < 1:
            raise ValueError(f"steps_per_read must be at least 1, got {steps_per_read}")
        self.twin = twin
        self.steps_per_read = int(steps_per_read)

    @property
    def topology(self) -> Topology:
        return self.twin.topo

    def read(self) -> Frame:
        self.twin.advance(self.steps_per_read)
        return self.twin.read()

    def close(self) -> None:
        """Nothing to release: the twin lives in memory."""


def single_node_topology(
    node_name: str,
    gpu_uuids: Sequence[str],
    gpu_models: Sequence[str],
    *,
    limit_w: float,
    site_name: str = "local",
) -> Topology:
    """A topology of one site, hall, row, rack and node holding ``gpu_uuids`` in NVML index order.

    ``gpu_models`` gives each GPU's profile name (a key of ``GPU_PROFILES``); ``limit_w`` is the hall busbar limit
    [W], for a lone node its maximum draw. Names follow :meth:`Topology.from_site` (``local/r00/k00``).

    >>> t = single_node_topology("node-a", ["GPU-0", "GPU-1"], ["H100", "H100"], limit_w=3000.0)
    >>> t.n_gpus, t.node_names, t.rack_names, t.gpu_local_index.tolist()
    (2, ['node-a'], ['local/r00/k00'], [0, 1])
    """
    if not gpu_uuids:
        raise ValueError("a node needs at least one GPU")
    if len(gpu_models) != len(gpu_uuids):
        raise ValueError("one model per GPU expected")
    n = len(gpu_uuids)
    distinct = list(dict.fromkeys(gpu_models))
    zero = np.zeros(1, dtype=np.int64)
    return Topology(
        site_name=site_name,
        hall_names=[site_name],
        row_names=[f"{site_name}/r00"],
        rack_names=[f"{site_name}/r00/k00"],
        node_names=[node_name],
        gpu_uuids=list(gpu_uuids),
        gpu_models=distinct,
        gpu_node=np.zeros(n, dtype=np.int64),
        node_rack=zero.copy(),
        rack_row=zero.copy(),
        row_hall=zero.copy(),
        gpu_model_idx=np.array([distinct.index(m) for m in gpu_models], dtype=np.int64),
        gpu_local_index=np.arange(n, dtype=np.int64),
        rack_cooling_unit=zero.copy(),
        cooling_unit_hall=zero.copy(),
        hall_busbar_limit_w=np.array([float(limit_w)]),
    )
