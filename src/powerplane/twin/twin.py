"""The digital twin of a site: a Source of frames and an Actuator of commands, on an injected clock.

The runtime cannot tell it from real hardware: it reads :meth:`Twin.read` and sends :meth:`Twin.apply`. For
fast offline runs :meth:`Twin.advance` moves a whole block of steps at once and returns every series of the block.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.core.clock import SimClock
from powerplane.core.commands import (
    BessSetpoint,
    Command,
    CommandResult,
    CoolingSetpoint,
    DeferJob,
    GpuPowerCap,
    JobPowerCap,
    PauseJob,
    ResumeJob,
)
from powerplane.core.frames import Frame
from powerplane.physics import gpu_power
from powerplane.topology import Topology
from powerplane.twin.fleet import Fleet, FleetBlock
from powerplane.twin.gpu_health import GpuHealth
from powerplane.twin.plant import Plant, PlantBlock, StepController
from powerplane.twin.workload import Workload

F64 = NDArray[np.float64]

THROTTLE_SW_POWER_CAP = 0x4  # NVML clocks-event reasons
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20


def site_start_s(site: SiteConfig) -> float:
    """Epoch seconds of the site's configured local start time."""
    local = dt.datetime.fromisoformat(site.start)
    if local.tzinfo is None:
        local = local.replace(tzinfo=ZoneInfo(site.timezone))
    return local.timestamp()


@dataclass
class TwinBlock:
    t_s: F64
    fleet: FleetBlock
    plant: PlantBlock
    rack_inlet_c: F64


class Twin:
    """A site simulated step by step. Deterministic for a given seed."""

    def __init__(
        self,
        site: SiteConfig,
        site_file: Path | None = None,
        *,
        seed: int = 0,
        dt_s: float = 1.0,
        start_s: float | None = None,
    ) -> None:
        if not dt_s > 0:
            raise ValueError("the step must be positive")
        self.site = site
        self.dt_s = float(dt_s)
        t0 = site_start_s(site) if start_s is None else float(start_s)
        self.t0_s = t0
        self.clock = SimClock(t0)
        self.topo = Topology.from_site(site)
        wl_seq, fleet_seq, plant_seq, health_seq = np.random.SeedSequence(seed).spawn(4)
        offset = dt.datetime.fromtimestamp(t0, ZoneInfo(site.timezone)).utcoffset() or dt.timedelta(0)
        self.workload = Workload(site, self.topo, np.random.default_rng(wl_seq), t0, offset.total_seconds())
        self.fleet = Fleet(site, self.topo, np.random.default_rng(fleet_seq), self.dt_s)
        self.plant = Plant(
            site, site_file, self.topo, np.random.default_rng(plant_seq), self.dt_s, t0, self.fleet.design_it_power_w
        )
        self.health = GpuHealth(self.topo.n_gpus, np.random.default_rng(health_seq))  # DCGM-style counters
        self._last: TwinBlock | None = None
        self.last_block_jobs = np.zeros(0, dtype=np.int64)
        self._rack_power_w = np.zeros(self.topo.n_racks)

    @property
    def now_s(self) -> float:
        return self.clock.now_s()

    # ----------------------------------------------------------------------------------- simulation

    def advance(self, n_steps: int, controller: StepController | None = None) -> TwinBlock:
        """Advance ``n_steps`` steps; return every series of the block (step k covers [t_k, t_k + dt)).

        A ``controller`` commands the batteries every step from the previous step's readings (closed loop);
        GPU caps and job commands sent through :meth:`apply` take effect from the next block.
        """
        if n_steps < 1:
            raise ValueError("advance needs at least one step")
        t0 = self.clock.now_s()
        t_s = t0 + self.dt_s * np.arange(n_steps, dtype=np.float64)
        acts = self.workload.advance(t0, n_steps, self.dt_s)
        inlet = self.plant.rack_inlet(t_s, self._rack_power_w, np.asarray(self.fleet.rack_peak_w, dtype=np.float64))
        fleet = self.fleet.advance(acts.activity, acts.mapping_changes, inlet)
        self.workload.jobs.energy_j[acts.column_jobs] += fleet.job_energy_j[1:]
        self.last_block_jobs = acts.column_jobs
        self._rack_power_w = fleet.rack_power_w.mean(axis=0, dtype=np.float64)
        plant = self.plant.advance(t_s, fleet.hall_it_power_w.sum(axis=1), controller, fleet.hall_it_power_w)
        self.clock.set(t0 + n_steps * self.dt_s)
        block = TwinBlock(t_s, fleet, plant, inlet.copy())
        self._last = block
        return block

    # ----------------------------------------------------------------------------------- Source

    def read(self) -> Frame:
        """The readings of the last completed step, as hardware and meters would report them."""
        if self._last is None:
            self.advance(1)
        assert self._last is not None
        b = self._last
        f, topo = self.fleet, self.topo
        power = f.power_w.astype(np.float64)
        temp = f.temp_c
        throttle = (
            np.where(power >= 0.98 * f.cap_w, THROTTLE_SW_POWER_CAP, 0)
            | np.where(temp >= f.slowdown_temp_c, THROTTLE_HW_SLOWDOWN, 0)
            | np.where(temp >= f.slowdown_temp_c - 5.0, THROTTLE_SW_THERMAL, 0)
        ).astype(np.int64)
        act = f.activity.astype(np.float64)
        clock = gpu_power.sm_clock_mhz(act, power, f.cap_w, f.base_sm_clock_mhz, f.max_sm_clock_mhz)
        node_power = b.fleet.node_power_w[-1].astype(np.float64)
        volts = 415.0 + 2.0 * np.sin(self.clock.now_s() / 600.0)
        p = b.plant
        gpu = {
            "power_w": power,
            "energy_mj": f.energy_j * 1e3,
            "util_pct": np.clip(act * 100.0, 0, 100),
            "mem_util_pct": np.clip(act * 70.0, 0, 100),
            "sm_clock_mhz": clock,
            "temp_c": temp,
            "mem_temp_c": temp + 4.0,
            "power_cap_w": f.cap_w.astype(np.float64),
            "throttle_reasons": throttle,
            "last_xid": self.workload.gpu_last_xid.copy(),
        }
        self.health.advance(float(b.t_s[-1] + self.dt_s), self.workload.xid_events)
        self.health.apply(gpu)
        node = {
            "power_w": node_power,
            "pdu_voltage_v": np.full(topo.n_nodes, volts),
            "pdu_current_a": node_power / (np.sqrt(3.0) * volts * 0.95),
        }
        rack = {"power_w": b.fleet.rack_power_w[-1].astype(np.float64), "inlet_temp_c": b.rack_inlet_c}
        hall = {"it_power_w": b.fleet.hall_it_power_w[-1]}
        site = {
            "frequency_hz": np.array([p.frequency_hz[-1]]),
            "meter_power_w": np.array([p.grid_power_w[-1]]),
            "facility_power_w": np.array([p.facility_power_w[-1]]),
            "it_power_w": np.array([p.it_power_w[-1]]),
            "renewable_power_w": np.array([p.renewable_power_w[-1]]),
            "outdoor_temp_c": np.array([p.outdoor_temp_c[-1]]),
        }
        bess = {"power_w": p.bess_unit_power_w[-1].copy(), "soc": p.bess_soc[-1].copy()}
        return Frame(
            t_s=float(b.t_s[-1] + self.dt_s),
            source="twin",
            levels={"gpu": gpu, "node": node, "rack": rack, "hall": hall, "site": site, "bess": bess},
        )

    # ----------------------------------------------------------------------------------- Actuator

    def apply(self, commands: list[Command]) -> list[CommandResult]:
        """Apply commands at the next step; each result says what was actually done."""
        return [self._apply_one(c) for c in commands]

    def _apply_one(self, c: Command) -> CommandResult:
        now = self.clock.now_s()
        wl = self.workload
        if isinstance(c, BessSetpoint):
            if not 0 <= c.unit < self.plant.bess.n_units:
                return CommandResult(c, False, detail=f"unknown battery unit {c.unit}")
            if not np.isfinite(c.power_w):
                return CommandResult(c, False, detail="setpoint is not a finite number")
            limit = float(self.plant.bess.power_max_w[c.unit])
            applied = float(np.clip(c.power_w, -limit, limit))
            self.plant.bess_setpoint_w[c.unit] = applied
            return CommandResult(c, True, applied != c.power_w, f"setpoint {applied:.0f} W")
        if isinstance(c, GpuPowerCap | JobPowerCap):
            if isinstance(c, JobPowerCap):
                if not 0 <= c.job < wl.jobs.n:
                    return CommandResult(c, False, detail=f"unknown job {c.job}")
                gpus = wl.jobs.gpus[c.job]
            else:
                gpus = np.asarray(c.gpus, dtype=np.int64)
                if gpus.size and (gpus.min() < 0 or gpus.max() >= self.topo.n_gpus):
                    return CommandResult(c, False, detail="GPU index out of range")
            caps, clipped = self.fleet.set_caps(gpus, c.cap_w)
            wl.set_cap_factors(self.fleet.cap_factors(), now)
            detail = f"{gpus.size} GPUs capped to {caps.min():.0f}-{caps.max():.0f} W" if gpus.size else "no GPUs"
            return CommandResult(c, True, clipped, detail)
        if isinstance(c, PauseJob | ResumeJob | DeferJob):
            if not 0 <= c.job < wl.jobs.n:
                return CommandResult(c, False, detail=f"unknown job {c.job}")
            if isinstance(c, PauseJob):
                ok = wl.pause(c.job, now, c.until_s)
            elif isinstance(c, ResumeJob):
                ok = wl.resume(c.job, now)
            else:
                ok = wl.defer(c.job, c.until_s)
            state = wl.jobs.state[c.job]
            return CommandResult(c, ok, detail="" if ok else f"job is in state {state}")
        if isinstance(c, CoolingSetpoint):
            applied_c, clipped = self.plant.set_supply_temp(c.supply_temp_c)
            return CommandResult(c, True, clipped, f"supply {applied_c:.1f} C")
        return CommandResult(c, False, detail=f"unsupported command {type(c).__name__}")
