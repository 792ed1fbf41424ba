"""GPU and node power by vendor profile, as plain functions over arrays.

The board-power model is affine in *activity* (the share of the GPU's power-relevant units that are busy, 0..1)
and clipped by the power cap:

    P = min(idle_w + activity * (peak_w - idle_w), cap_w)

``peak_w`` is the sustained draw of a saturated compute phase, below TDP: a real 8xH100 LLM-training trace sampled
at 100 ms shows ~70 W idle and compute phases near 550-600 W on a 700 W part (grantwilkins/training_profile,
h100-traces/, quoted in FACTS.md). Node power adds CPUs, NVSwitch, NICs and fans: a base plus a share of the GPU
power, calibrated so that a DGX H100 peaks near the 8.4 kW measured maxima and a DGX B200 near 14 kW.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class GpuProfile:
    """Published and measured figures for one GPU model.

    tdp_w: board power limit [W] (vendor datasheet).
    idle_w: draw with nothing running [W].
    peak_w: sustained draw in a saturated training compute phase [W].
    min_cap_w / max_cap_w: range accepted for the power cap [W] (NVML power-management limit constraints).
    slowdown_temp_c: hardware slowdown temperature [C]; shutdown_temp_c: thermal shutdown [C].
    max_sm_clock_mhz / base_sm_clock_mhz: boost and base SM clock [MHz].
    node_base_w: per-node overhead with idle GPUs (CPUs, NVSwitch, NICs, fans) [W].
    node_gpu_share: extra node overhead per watt of GPU power (fans, switch and CPU load) [-].
    """

    vendor: str
    tdp_w: float
    idle_w: float
    peak_w: float
    min_cap_w: float
    max_cap_w: float
    slowdown_temp_c: float
    shutdown_temp_c: float
    max_sm_clock_mhz: float
    base_sm_clock_mhz: float
    memory_gib: float
    node_base_w: float
    node_gpu_share: float


# Published parameter sets kept as data (STYLE.md: pvlib's TEMPERATURE_MODEL_PARAMETERS). Idle and peak for H100
# from the measured trace in FACTS.md; others scaled from datasheet TDP. Temperatures and clocks: vendor figures
# (nvidia-smi -q "GPU Slowdown Temp" on H100 SXM is ~87-90 C); values marked estimate in the table below.
GPU_PROFILES: dict[str, GpuProfile] = {
    "H100": GpuProfile(
        vendor="NVIDIA",
        tdp_w=700.0,
        idle_w=70.0,
        peak_w=590.0,
        min_cap_w=200.0,
        max_cap_w=700.0,
        slowdown_temp_c=87.0,
        shutdown_temp_c=92.0,
        max_sm_clock_mhz=1980.0,
        base_sm_clock_mhz=1590.0,
        memory_gib=80.0,
        node_base_w=1500.0,
        node_gpu_share=0.45,
    ),
    "H200": GpuProfile(
        vendor="NVIDIA",
        tdp_w=700.0,
        idle_w=75.0,
        peak_w=600.0,
        min_cap_w=200.0,
        max_cap_w=700.0,
        slowdown_temp_c=87.0,
        shutdown_temp_c=92.0,
        max_sm_clock_mhz=1980.0,
        base_sm_clock_mhz=1590.0,
        memory_gib=141.0,
        node_base_w=1500.0,
        node_gpu_share=0.45,
    ),
    # DGX B200: ~14.3 kW max; 1.8 kW + 8 x 1,000 W x 1.45 = 13.4 kW with every GPU at TDP.
    "B200": GpuProfile(
        vendor="NVIDIA",
        tdp_w=1000.0,
        idle_w=140.0,
        peak_w=900.0,
        min_cap_w=200.0,
        max_cap_w=1000.0,
        slowdown_temp_c=87.0,
        shutdown_temp_c=92.0,
        max_sm_clock_mhz=1965.0,
        base_sm_clock_mhz=1665.0,
        memory_gib=180.0,
        node_base_w=1800.0,
        node_gpu_share=0.45,
    ),
    "MI300X": GpuProfile(
        vendor="AMD",
        tdp_w=750.0,
        idle_w=90.0,
        peak_w=640.0,
        min_cap_w=300.0,
        max_cap_w=750.0,
        slowdown_temp_c=95.0,
        shutdown_temp_c=105.0,
        max_sm_clock_mhz=2100.0,
        base_sm_clock_mhz=1500.0,
        memory_gib=192.0,
        node_base_w=1600.0,
        node_gpu_share=0.45,
    ),
}


def profile(model: str) -> GpuProfile:
    """Look up a GPU model; unknown models raise ValueError listing the known ones."""
    try:
        return GPU_PROFILES[model]
    except KeyError:
        raise ValueError(f"unknown GPU model {model!r}; known: {sorted(GPU_PROFILES)}") from None


def board_power_w(activity: ArrayLike, idle_w: ArrayLike, peak_w: ArrayLike, cap_w: ArrayLike) -> NDArray[np.float64]:
    """Board power [W] for an activity in [0, 1] under a power cap [W].

    >>> float(board_power_w(1.0, 70.0, 590.0, 700.0))
    590.0
    >>> float(board_power_w(1.0, 70.0, 590.0, 400.0))
    400.0
    """
    a = np.clip(np.asarray(activity, dtype=np.float64), 0.0, 1.0)
    idle = np.asarray(idle_w, dtype=np.float64)
    return np.minimum(idle + a * (np.asarray(peak_w, dtype=np.float64) - idle), np.asarray(cap_w, dtype=np.float64))


def throughput_factor(cap_w: ArrayLike, idle_w: ArrayLike, peak_w: ArrayLike, exponent: float = 0.5) -> NDArray:
    """Share of full training throughput left under a power cap [-].

    Work per second falls more slowly than power when a GPU is capped (clocks drop, memory-bound phases do
    not): ``((cap - idle) / (peak - idle)) ** exponent``, 1 when the cap is above the peak draw. The default
    exponent 0.5 gives ~82 % throughput at a cap of ~60 % of TDP on an H100, in the range reported for
    LLM training under caps (*estimate*; POLCA and Emerald AI report 10-25 % throughput loss for 25-30 % less power).
    """
    idle = np.asarray(idle_w, dtype=np.float64)
    ratio = (np.asarray(cap_w, dtype=np.float64) - idle) / (np.asarray(peak_w, dtype=np.float64) - idle)
    return np.asarray(np.clip(ratio, 0.0, 1.0) ** exponent)


def node_power_w(gpu_power_sum_w: ArrayLike, node_base_w: ArrayLike, node_gpu_share: ArrayLike) -> NDArray:
    """Node power [W] from the sum of its GPUs' board power [W]: base overhead plus a share of GPU power.

    >>> round(float(node_power_w(8 * 590.0, 1500.0, 0.45)))
    8344
    """
    g = np.asarray(gpu_power_sum_w, dtype=np.float64)
    return np.asarray(np.asarray(node_base_w) + g * (1.0 + np.asarray(node_gpu_share)))


def sm_clock_mhz(
    activity: ArrayLike, power_w: ArrayLike, cap_w: ArrayLike, base_mhz: ArrayLike, max_mhz: ArrayLike
) -> NDArray:
    """SM clock [MHz]: boost when busy and below the cap, pulled towards base clock as power presses the cap."""
    a = np.clip(np.asarray(activity, dtype=np.float64), 0.0, 1.0)
    pressure = np.clip(np.asarray(power_w) / np.maximum(np.asarray(cap_w), 1.0), 0.0, 1.0)
    base = np.asarray(base_mhz, dtype=np.float64)
    top = np.asarray(max_mhz, dtype=np.float64)
    idle_clock = 0.35 * base
    busy_clock = top - (top - base) * np.clip((pressure - 0.9) / 0.1, 0.0, 1.0)
    return np.asarray(idle_clock + a * (busy_clock - idle_clock))
