"""Real public traces that calibrate the twin's workloads (shipped in ``powerplane/data``, see its README).

- Alibaba cluster-trace-gpu-v2023 (openb): GPU counts, fractional GPU requests (gpu_milli), QoS classes and
  lifetimes of 8,152 production pods. Small-job sizes and durations are drawn from it.
- Azure LLM inference trace 2023: one hour of request arrivals with token counts; its per-second token rate,
  stretched into a daily cycle, drives the inference services' load.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray


def data_file(name: str) -> Path:
    """Path of a data file shipped in the package."""
    return Path(str(resources.files("powerplane").joinpath("data", name)))


@lru_cache(maxsize=1)
def alibaba_gpu_pods() -> pd.DataFrame:
    """Pods of the openb trace that hold GPUs and have a known lifetime.

    Columns: ``num_gpu`` (int >= 1), ``gpu_fraction`` (gpu_milli / 1000, 0-1], ``qos`` and ``duration_s``.
    """
    raw = pd.read_csv(data_file("alibaba_openb_pod_list_default.csv"))
    raw = raw[(raw["num_gpu"] >= 1) & raw["deletion_time"].notna() & raw["scheduled_time"].notna()]
    duration = (raw["deletion_time"] - raw["scheduled_time"]).astype(np.float64)
    out = pd.DataFrame(
        {
            "num_gpu": raw["num_gpu"].astype(np.int64),
            "gpu_fraction": np.clip(raw["gpu_milli"].astype(np.float64) / 1000.0, 0.05, 1.0),
            "qos": raw["qos"].astype(str),
            "duration_s": duration,
        }
    )
    return out[out["duration_s"] > 0].reset_index(drop=True)


@lru_cache(maxsize=2)
def azure_token_rate_profile(trace: str = "conv", smooth_s: int = 15) -> NDArray[np.float64]:
    """Per-second token rate of the Azure inference trace over its hour, smoothed, normalized to mean 1 [-].

    The trace spans about one hour; seconds are counted from its first request. Smoothing over ``smooth_s``
    seconds stands in for the batching of a serving engine.
    """
    df = pd.read_csv(data_file(f"azure_llm_inference_2023_{trace}.csv"), parse_dates=["TIMESTAMP"])
    t = (df["TIMESTAMP"] - df["TIMESTAMP"].iloc[0]).dt.total_seconds().to_numpy()
    tokens = (df["ContextTokens"] + df["GeneratedTokens"]).to_numpy(dtype=np.float64)
    n = int(np.ceil(t.max())) + 1
    per_s = np.bincount(t.astype(np.int64), weights=tokens, minlength=n)
    kernel = np.ones(smooth_s) / smooth_s
    # Circular smoothing so the hour tiles without a seam.
    padded = np.concatenate([per_s[-smooth_s:], per_s, per_s[:smooth_s]])
    smooth = np.convolve(padded, kernel, mode="same")[smooth_s:-smooth_s]
    return np.asarray(smooth / smooth.mean())


def diurnal_shape(hour_local: NDArray[np.float64], peak_hour: float, trough_fraction: float) -> NDArray[np.float64]:
    """Daily load shape in [trough_fraction, 1]: a cosine peaking at ``peak_hour`` local time."""
    phase = 2.0 * np.pi * (hour_local - peak_hour) / 24.0
    return np.asarray(trough_fraction + (1.0 - trough_fraction) * 0.5 * (1.0 + np.cos(phase)))


def sample_durations_mapped(rng: np.random.Generator, n: int, low_s: float, high_s: float) -> NDArray[np.float64]:
    """Durations in [low_s, high_s] with the *shape* of the Alibaba lifetime distribution.

    Draws trace lifetimes, takes their rank in the trace's distribution (a quantile u in [0, 1]) and maps it
    log-uniformly onto the requested range: long-tailed like the real cluster, bounded like the job class.
    """
    pods = alibaba_gpu_pods()["duration_s"].to_numpy()
    sorted_d = np.sort(pods)
    draws = rng.choice(pods, size=n)
    u = np.searchsorted(sorted_d, draws, side="right") / sorted_d.size
    return np.asarray(low_s * (high_s / low_s) ** u)
