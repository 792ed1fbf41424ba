"""GPU health counters of the twin, as DCGM reports them: Xid count, ECC, PCIe replays, NVLink CRC, on the bus.

The counters follow the workload's injected Xid faults (each event counted once, by code: 48 a double-bit ECC
error, 92 a storm of single-bit ones, 74 a burst of NVLink CRC errors, 79 the GPU falls off the bus), a low
background of PCIe replays, and explicit injections for tests (:meth:`GpuHealth.inject`). A GPU reset
(:meth:`GpuHealth.reset`) clears the volatile ECC counters and brings a GPU back on the bus, as a driver reload does.
Work per read is sparse: only the GPUs with something happening are touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

PCIE_BACKGROUND_PER_GPU_MIN = 0.02  # mean PCIe replays per GPU-minute on healthy links
NVLINK_BURST_PER_S = 400.0  # CRC errors per second after an NVLink fault (Xid 74)
FAULT_RATE_DURATION_S = 120.0  # how long such a burst lasts
HW_POWER_BRAKE = 0x80  # NVML clocks-event reason: HW power brake slowdown
SBE_STORM = 1000.0  # single-bit errors counted with an Xid 92 (excessive SBE interrupts)
NODE_SIDE = ("xid_total", "last_xid")  # from the node's kernel log, known even when the GPU does not answer


class GpuHealth:
    def __init__(self, n_gpus: int, rng: np.random.Generator) -> None:
        self.n = n_gpus
        self.rng = rng
        self.xid_total = np.zeros(n_gpus)
        self.ecc_dbe_vol = np.zeros(n_gpus)
        self.ecc_sbe_vol = np.zeros(n_gpus)
        self.pcie_replay_total = np.zeros(n_gpus)
        self.nvlink_crc_total = np.zeros(n_gpus)
        self.off_bus = np.zeros(n_gpus, dtype=bool)
        self.brake_until_s = np.full(n_gpus, -np.inf)  # hardware power brake asserted (an external signal)
        self._t_s = -np.inf
        # Injected error rates: (gpus, counter, per second, until t_s).
        self._rates: list[tuple[NDArray[np.int64], str, float, float]] = []
        self._events_seen = 0
        self._last_t_s: float | None = None

    def advance(self, t_s: float, xid_events: Sequence[Any]) -> None:
        """Bring the counters up to ``t_s``: new Xid events (objects with ``gpu`` and ``xid``), rates, background."""
        for ev in xid_events[self._events_seen :]:
            self._xid(int(ev.gpu), int(ev.xid), t_s)
        self._events_seen = len(xid_events)
        self._t_s = t_s
        dt = 0.0 if self._last_t_s is None else max(t_s - self._last_t_s, 0.0)
        self._last_t_s = t_s
        if dt <= 0:
            return
        k = self.rng.poisson(self.n * PCIE_BACKGROUND_PER_GPU_MIN * dt / 60.0)
        if k:
            np.add.at(self.pcie_replay_total, self.rng.integers(0, self.n, k), 1.0)
        keep = []
        for gpus, counter, per_s, until_s in self._rates:
            getattr(self, counter)[gpus] += per_s * dt
            if until_s > t_s:
                keep.append((gpus, counter, per_s, until_s))
        self._rates = keep

    def _xid(self, gpu: int, code: int, t_s: float) -> None:
        self.xid_total[gpu] += 1
        if code == 48:
            self.ecc_dbe_vol[gpu] += 1
        elif code == 92:
            self.ecc_sbe_vol[gpu] += SBE_STORM
        elif code == 74:
            self._rates.append((np.array([gpu]), "nvlink_crc_total", NVLINK_BURST_PER_S, t_s + FAULT_RATE_DURATION_S))
        elif code == 79:
            self.off_bus[gpu] = True

    def inject(
        self,
        kind: str,
        gpus: Sequence[int] | NDArray[np.int64],
        t_s: float,
        per_s: float = 0.0,
        duration_s: float = FAULT_RATE_DURATION_S,
    ) -> None:
        """Inject a fault: ``pcie_replay`` / ``nvlink_crc`` (a rate per second for a while), ``ecc_dbe``,
        ``off_bus``, ``power_brake`` (for ``duration_s``)."""
        g = np.asarray(gpus, dtype=np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.n):
            raise ValueError("GPU index out of range")
        if kind in ("pcie_replay", "nvlink_crc"):
            counter = "pcie_replay_total" if kind == "pcie_replay" else "nvlink_crc_total"
            self._rates.append((g, counter, float(per_s), t_s + duration_s))
        elif kind == "ecc_dbe":
            self.ecc_dbe_vol[g] += 1
        elif kind == "off_bus":
            self.off_bus[g] = True
        elif kind == "power_brake":
            self.brake_until_s[g] = t_s + duration_s
        else:
            raise ValueError(f"unknown GPU fault {kind!r} (pcie_replay, nvlink_crc, ecc_dbe, off_bus, power_brake)")

    def reset(self, gpus: Sequence[int] | NDArray[np.int64]) -> None:
        """A GPU reset or driver reload: volatile ECC counters cleared, the GPU back on the bus, bursts ended."""
        g = np.asarray(gpus, dtype=np.int64)
        self.ecc_dbe_vol[g] = 0
        self.ecc_sbe_vol[g] = 0
        self.off_bus[g] = False
        gone = set(g.tolist())
        self._rates = [(gp[~np.isin(gp, g)], c, r, u) for gp, c, r, u in self._rates if not set(gp.tolist()) <= gone]

    def apply(self, gpu: dict[str, Any]) -> None:
        """Add the counters to a frame's GPU metrics. A GPU off the bus answers no device query (its readings are
        NaN, which validation counts); its Xid count still comes from the node's kernel log."""
        gpu["xid_total"] = self.xid_total.copy()
        gpu["ecc_dbe_vol"] = self.ecc_dbe_vol.copy()
        gpu["ecc_sbe_vol"] = self.ecc_sbe_vol.copy()
        gpu["pcie_replay_total"] = self.pcie_replay_total.copy()
        gpu["nvlink_crc_total"] = self.nvlink_crc_total.copy()
        braked = self.brake_until_s > self._t_s
        if braked.any() and "throttle_reasons" in gpu:
            gpu["throttle_reasons"] = np.asarray(gpu["throttle_reasons"]) | np.where(braked, HW_POWER_BRAKE, 0)
        if self.off_bus.any():
            off = self.off_bus
            for k, v in gpu.items():
                if k not in NODE_SIDE and np.asarray(v).dtype.kind == "f":
                    gpu[k] = np.where(off, np.nan, v)
