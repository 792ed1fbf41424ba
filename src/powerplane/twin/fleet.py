"""The GPU fleet of the twin: board power, temperatures and energy of every GPU, a block of steps at a time.

All per-GPU work is vectorized over a [steps, GPUs] float32 block: one gather of job activity, a handful of
in-place arithmetic passes, one sum for energy and one matrix-vector product for the thermal lag. No Python loop
ever runs over GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.physics import gpu_power, thermal
from powerplane.topology import Topology

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

NOISE_SIGMA_W = 4.0  # sensor and load jitter per GPU [W]
POWER_VARIATION = 0.02  # chip-to-chip spread of dynamic power (1 sigma) [-]
NETWORK_STORAGE_W_PER_NODE = 350.0  # switch fabric and storage share per node [W] (estimate)


@dataclass
class FleetBlock:
    """Fleet output for a block of steps."""

    gpu_power_w: F32  # [T, G]
    node_power_w: F32  # [T, N] (GPUs + node overhead)
    rack_power_w: F32  # [T, R]
    hall_it_power_w: F64  # [T, H] (racks + network and storage)
    job_energy_j: F64  # [J + 1] energy of each job column over the block (column 0: idle GPUs)


class Fleet:
    def __init__(self, site: SiteConfig, topo: Topology, rng: np.random.Generator, dt_s: float) -> None:
        self.topo = topo
        self.dt_s = dt_s
        profiles = [gpu_power.profile(m) for m in topo.gpu_models]
        midx = topo.gpu_model_idx

        def per_gpu(attr: str) -> F64:
            return np.array([getattr(p, attr) for p in profiles], dtype=np.float64)[midx]

        self.tdp_w = per_gpu("tdp_w")
        self.idle_w = per_gpu("idle_w").astype(np.float32)
        self.peak_w = per_gpu("peak_w")
        self.min_cap_w = per_gpu("min_cap_w")
        self.max_cap_w = per_gpu("max_cap_w")
        self.slowdown_temp_c = per_gpu("slowdown_temp_c")
        self.base_sm_clock_mhz = per_gpu("base_sm_clock_mhz")
        self.max_sm_clock_mhz = per_gpu("max_sm_clock_mhz")
        variation = 1.0 + POWER_VARIATION * rng.standard_normal(topo.n_gpus)
        self.span_w = ((self.peak_w - self.idle_w) * variation).astype(np.float32)
        self.cap_w = self.max_cap_w.astype(np.float32)  # default: the board limit
        node_model = topo.gpu_model_idx[np.searchsorted(topo.gpu_node, np.arange(topo.n_nodes))]
        self.node_base_w = np.array([p.node_base_w for p in profiles])[node_model].astype(np.float32)
        self.node_share = np.array([p.node_gpu_share for p in profiles])[node_model].astype(np.float32)
        gpn = np.bincount(topo.gpu_node, minlength=topo.n_nodes)
        self._uniform_gpn = int(gpn[0]) if np.all(gpn == gpn[0]) else 0
        cooling = site.cooling
        self.resistance_c_per_w = cooling.thermal_resistance_c_per_w * (1.0 + 0.08 * rng.standard_normal(topo.n_gpus))
        self.resistance_c_per_w = np.clip(self.resistance_c_per_w, 0.5 * cooling.thermal_resistance_c_per_w, None)
        self.gpu_tau_s = cooling.gpu_time_constant_s
        self.energy_j = np.zeros(topo.n_gpus, dtype=np.float64)
        self.last_gpu_energy_j = np.zeros(topo.n_gpus, dtype=np.float64)
        self.power_w = self.idle_w.astype(np.float32).copy()  # last step's power
        self.activity = np.zeros(topo.n_gpus, dtype=np.float32)  # last step's activity
        self.temp_c = np.full(topo.n_gpus, cooling.supply_temp_c + 10.0, dtype=np.float64)
        self._thermal_started = False
        self._noise = (NOISE_SIGMA_W * rng.standard_normal(1 << 20)).astype(np.float32)
        self._noise_rng = rng
        self._gpu_rack = topo.parent_index("gpu", "rack")
        self._hall_nodes = np.bincount(topo.parent_index("node", "hall"), minlength=topo.n_halls).astype(np.float64)
        node_peak_w = gpu_power.node_power_w(
            topo.rollup_sum(self.peak_w, "gpu", "node"), self.node_base_w.astype(np.float64), self.node_share
        ).astype(np.float64)
        self.rack_peak_w = topo.rollup_sum(node_peak_w, "node", "rack")
        self.design_it_power_w = float(node_peak_w.sum())  # every GPU at its sustained peak (sizes the UPS)

    # ------------------------------------------------------------------------------- caps

    def set_caps(self, gpus: I64, cap_w: F64 | float) -> tuple[F64, bool]:
        """Set caps, clipped to each GPU's allowed range; NaN restores the default. Returns (applied, clipped)."""
        want = np.broadcast_to(np.asarray(cap_w, dtype=np.float64), gpus.shape)
        want = np.where(np.isnan(want), self.max_cap_w[gpus], want)
        applied = np.clip(want, self.min_cap_w[gpus], self.max_cap_w[gpus])
        self.cap_w[gpus] = applied
        return applied, bool(np.any(applied != want))

    def cap_factors(self) -> F64:
        """Compute-speed factor each GPU's cap allows [-]."""
        return np.asarray(gpu_power.throughput_factor(self.cap_w, self.idle_w, self.peak_w))

    # ------------------------------------------------------------------------------- block

    def advance(self, activity: F32, mapping: list[tuple[int, I64]], inlet_c: F64) -> FleetBlock:
        """Advance all GPUs over a block given job activity [T, J+1], the GPU->column mapping changes and the
        rack inlet temperatures [R] (held over the block)."""
        topo = self.topo
        n_steps = activity.shape[0]
        g = topo.n_gpus
        # One full gather with the block's first mapping, then patch only the GPUs whose job changed later.
        _k0, cols0 = mapping[0]
        p = activity[:, cols0]
        current = cols0
        moves: list[tuple[int, I64, I64, I64]] = []
        for k, cols in mapping[1:]:
            changed = np.flatnonzero(cols != current)
            if changed.size:
                p[k:, changed] = activity[k:, cols[changed]]
                moves.append((k, changed, current[changed], cols[changed]))
            current = cols
        self.activity = p[-1].copy()
        p *= self.span_w
        # Jitter drawn per GPU per block from a pre-drawn table, folded into the idle term: no extra pass over
        # the block. In the live cycle a block is one step, so live readings jitter every step.
        off = int(self._noise_rng.integers(0, self._noise.size - g))
        p += self.idle_w + self._noise[off : off + g]
        np.minimum(p, self.cap_w, out=p)
        # Energy per GPU and per job column; reductions as BLAS products (far faster than ufunc.reduce here).
        ones_t = np.ones(n_steps, dtype=np.float32)
        gpu_sum = (ones_t @ p).astype(np.float64)
        self.last_gpu_energy_j = gpu_sum * self.dt_s
        self.energy_j += self.last_gpu_energy_j
        n_cols = activity.shape[1]
        job_energy: F64 = np.bincount(cols0, weights=gpu_sum, minlength=n_cols).astype(np.float64)
        for k, changed, old, new in moves:
            part = (ones_t[k:] @ p[k:, changed]).astype(np.float64)
            job_energy += np.bincount(new, weights=part, minlength=n_cols) - np.bincount(
                old, weights=part, minlength=n_cols
            )
        job_energy *= self.dt_s
        # Node, rack and hall power.
        if self._uniform_gpn:
            ones_g = np.ones(self._uniform_gpn, dtype=np.float32)
            gpu_node_sum = (p.reshape(-1, self._uniform_gpn) @ ones_g).reshape(n_steps, topo.n_nodes)
        else:
            gpu_node_sum = topo.rollup_sum(p, "gpu", "node")
        node = gpu_node_sum * (1.0 + self.node_share) + self.node_base_w
        rack = topo.rollup_sum(node, "node", "rack")
        hall = topo.rollup_sum(rack.astype(np.float64), "rack", "hall") + self._hall_nodes * NETWORK_STORAGE_W_PER_NODE
        # Temperatures: first-order lag towards inlet + R * P, advanced over the block in one product.
        a = thermal.lag_coefficient(self.dt_s, self.gpu_tau_s)
        w = thermal.lag_weights(n_steps, a).astype(np.float32)
        inlet_gpu = inlet_c[self._gpu_rack]
        weighted_p = w @ p
        if not self._thermal_started:  # start from the steady state of the first step, not from cold
            self.temp_c = inlet_gpu + self.resistance_c_per_w * p[0]
            self._thermal_started = True
        self.temp_c = a**n_steps * self.temp_c + (1.0 - a**n_steps) * inlet_gpu + self.resistance_c_per_w * weighted_p
        self.power_w = p[-1].copy()
        return FleetBlock(p, node.astype(np.float32), rack.astype(np.float32), hall, job_energy)
