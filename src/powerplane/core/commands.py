"""Commands to actuators and what the actuators report back.

A command is what the device *should* do; a result says what it *did*: actuators clip commands to physics and
limits and never obey blindly. Battery power is positive when discharging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class BessSetpoint:
    """Set a battery unit's AC power [W] (positive: discharge)."""

    unit: int
    power_w: float
    kind: Literal["bess_setpoint"] = "bess_setpoint"


@dataclass(frozen=True)
class GpuPowerCap:
    """Cap the board power of GPUs [W]; ``cap_w`` is one value or one per GPU. NaN restores the default cap."""

    gpus: NDArray[np.int64]
    cap_w: NDArray[np.float64] | float
    kind: Literal["gpu_power_cap"] = "gpu_power_cap"


@dataclass(frozen=True)
class JobPowerCap:
    """Cap every GPU of a job [W]; NaN restores the default."""

    job: int
    cap_w: float
    kind: Literal["job_power_cap"] = "job_power_cap"


@dataclass(frozen=True)
class PauseJob:
    job: int
    until_s: float = float("inf")
    kind: Literal["pause_job"] = "pause_job"


@dataclass(frozen=True)
class ResumeJob:
    job: int
    kind: Literal["resume_job"] = "resume_job"


@dataclass(frozen=True)
class DeferJob:
    """Hold a queued job back until ``until_s`` (epoch seconds)."""

    job: int
    until_s: float
    kind: Literal["defer_job"] = "defer_job"


@dataclass(frozen=True)
class CoolingSetpoint:
    """Cooling supply-air/water temperature [C]."""

    supply_temp_c: float
    kind: Literal["cooling_setpoint"] = "cooling_setpoint"


Command = BessSetpoint | GpuPowerCap | JobPowerCap | PauseJob | ResumeJob | DeferJob | CoolingSetpoint


@dataclass(frozen=True)
class CommandResult:
    """What an actuator did with a command: ``applied`` is False when refused; ``clipped`` when limits bound it."""

    command: Command
    applied: bool
    clipped: bool = False
    detail: str = ""
