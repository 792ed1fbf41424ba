"""The telemetry cycle: a source's frame in, a validated and rolled-up snapshot out.

validate -> roll up the tree with coverage -> energy per GPU (counters, wrap and reset aware, else power x dt)
-> per-job power, energy and cost -> ring buffer -> history (non-blocking).
"""

from __future__ import annotations

from collections import ChainMap, Counter
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.core.frames import Frame
from powerplane.physics import gpu_power, tariff
from powerplane.telemetry.ring import GpuRing
from powerplane.telemetry.rollup import job_rollup, rollup_level
from powerplane.telemetry.snapshot import Quality, Rollup, Snapshot
from powerplane.telemetry.validate import Limits, Validator
from powerplane.topology import Topology

F64 = NDArray[np.float64]

GPU_ROLLUP_METRICS = ("power_w", "util_pct", "mem_util_pct", "sm_clock_mhz", "temp_c", "mem_temp_c", "power_cap_w")
NODE_ROLLUP_METRICS = ("power_w", "pdu_current_a")
RACK_ROLLUP_METRICS = ("power_w", "inlet_temp_c")


class HistorySink(Protocol):
    def submit(self, snapshot: Snapshot) -> bool: ...


class Tracker:
    """Turns frames into snapshots. Keeps the state that spans cycles: counters, energy, the ring, the totals."""

    def __init__(
        self,
        topology: Topology,
        site: SiteConfig | None = None,
        limits: Limits | None = None,
        ring: GpuRing | None = None,
        history: HistorySink | None = None,
    ) -> None:
        self.topo = topology
        self.site = site
        tdp = np.array(
            [gpu_power.GPU_PROFILES[m].tdp_w if m in gpu_power.GPU_PROFILES else 1000.0 for m in topology.gpu_models]
        )[topology.gpu_model_idx]
        self.validator = Validator(tdp, limits)
        self.ring = ring
        self.history = history
        self.seq = 0
        self.gpu_energy_j = np.zeros(topology.n_gpus)
        self.job_energy_j: dict[int, float] = {}
        self.job_cost: dict[int, float] = {}
        self.rejected_total: Counter[str] = Counter()
        self._last_t_s: float | None = None
        self._last_power: F64 | None = None
        self.last: Snapshot | None = None
        self._price_key = -1
        self._price_now = 0.0

    def ingest(
        self, frame: Frame, gpu_job: NDArray[np.int64] | None = None, source_rejected: Counter[str] | None = None
    ) -> Snapshot:
        """Validate and roll up one frame. ``gpu_job`` maps each GPU to its job (-1: none)."""
        topo = self.topo
        if "gpu" in frame.levels:
            for name, arr in frame.levels["gpu"].items():
                if name != "_reported" and np.asarray(arr).shape != (topo.n_gpus,):
                    raise ValueError(
                        f"frame gpu metric {name!r} has shape {np.asarray(arr).shape}, "
                        f"expected ({topo.n_gpus},) for this topology"
                    )
        v = self.validator.validate(frame)
        rejected = v.rejected
        if source_rejected:
            rejected.update(source_rejected)
        self.rejected_total.update(rejected)
        blocks: dict[str, list[Mapping[str, Rollup]]] = {}
        for child, metrics in (
            ("gpu", GPU_ROLLUP_METRICS),
            ("node", NODE_ROLLUP_METRICS),
            ("rack", RACK_ROLLUP_METRICS),
        ):
            if child in v.levels:
                for parent, block in rollup_level(topo, child, v.levels[child], metrics).items():  # type: ignore[arg-type]
                    blocks.setdefault(parent, []).append(block)
        rollups: dict[str, Mapping[str, Rollup]] = {p: ChainMap(*bs) for p, bs in blocks.items()}  # type: ignore[arg-type]
        # Energy per GPU: counters where valid, else power x elapsed time.
        dt = 0.0 if self._last_t_s is None else max(frame.t_s - self._last_t_s, 0.0)
        delta_j = v.energy_delta_j
        if "gpu" in v.levels and "power_w" in v.levels["gpu"].values:
            gl = v.levels["gpu"]
            p_ok = gl.quality["power_w"] == Quality.OK
            power = np.where(p_ok, gl.values["power_w"], np.nan)
            integrated = power * dt
            delta_j = np.where(np.isfinite(delta_j), delta_j, integrated)
            self._last_power = power
        delta_j = np.where(np.isfinite(delta_j), delta_j, 0.0)
        self.gpu_energy_j += delta_j
        # Jobs.
        job_ids = np.zeros(0, dtype=np.int64)
        job_power = np.zeros(0)
        job_cov = np.zeros(0)
        if gpu_job is not None and "gpu" in v.levels and "power_w" in v.levels["gpu"].values:
            gl = v.levels["gpu"]
            job_ids, job_power, job_cov = job_rollup(gpu_job, gl.values["power_w"], gl.ok("power_w"))
            if job_ids.size and delta_j.any():
                e = np.bincount(gpu_job + 1, weights=delta_j)[job_ids + 1]
                price = self._price(frame.t_s)
                for j, ej in zip(job_ids.tolist(), e.tolist(), strict=True):
                    self.job_energy_j[j] = self.job_energy_j.get(j, 0.0) + ej
                    self.job_cost[j] = self.job_cost.get(j, 0.0) + ej / 3.6e6 * price
        if "site" in v.levels:
            site_vals = v.levels["site"]
            if "facility_power_w" in site_vals.values and "it_power_w" in site_vals.values:
                fac, it = site_vals.values["facility_power_w"], site_vals.values["it_power_w"]
                ok = site_vals.ok("facility_power_w") & site_vals.ok("it_power_w") & (it > 0)
                site_vals.values["pue"] = np.where(ok, fac / np.where(it > 0, it, 1.0), np.nan)
                site_vals.quality["pue"] = np.where(ok, Quality.OK, Quality.INVALID).astype(np.uint8)
        self.seq += 1
        self._last_t_s = frame.t_s
        snap = Snapshot(
            t_s=frame.t_s,
            seq=self.seq,
            source=frame.source,
            levels=v.levels,
            rollups=rollups,
            job_ids=job_ids,
            job_power_w=job_power,
            job_coverage=job_cov,
            job_energy_kwh=np.array([self.job_energy_j.get(int(j), 0.0) / 3.6e6 for j in job_ids]),
            job_cost=np.array([self.job_cost.get(int(j), 0.0) for j in job_ids]),
            gpu_energy_kwh=self.gpu_energy_j / 3.6e6,
            rejected=rejected,
            rejected_total=Counter(self.rejected_total),
        )
        if self.ring is not None and "gpu" in v.levels:
            gl = v.levels["gpu"]
            self.ring.push(
                frame.t_s, {m: np.where(gl.ok(m), gl.values[m], np.nan) for m in self.ring.metrics if m in gl.values}
            )
        if self.history is not None:
            self.history.submit(snap)
        self.last = snap
        return snap

    def _price(self, t_s: float) -> float:
        """Energy price now; tariffs change on quarter hours at the finest, so it is cached per quarter hour."""
        if self.site is None:
            return 0.0
        key = int(t_s // 900)
        if key != self._price_key:
            self._price_key = key
            self._price_now = float(tariff.price_per_kwh(np.array([t_s]), self.site.tariff, self.site.timezone)[0])
        return self._price_now
