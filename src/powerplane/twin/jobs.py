"""Jobs of the twin: a struct-of-arrays table and the per-job activity they put on their GPUs.

A training job alternates a compute phase (near full activity) and a collective phase (near idle) every
iteration, synchronized across all its GPUs; it checkpoints periodically (near idle for tens of seconds), starts
with a ramp, stalls on a fault and restarts from its last checkpoint, and is slowed by stragglers and power caps.

Activity over a time step is the *average* over that step, computed in closed form from the iteration phase, so a
1-second step reports what a 1-second meter would see and a 100 ms step resolves each iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


class Kind(IntEnum):
    PRETRAIN = 0
    FINETUNE = 1
    INFERENCE = 2
    BATCH = 3


class State(IntEnum):
    QUEUED = 0
    STARTING = 1
    RUNNING = 2
    CHECKPOINT = 3
    STALLED = 4
    PAUSED = 5
    DONE = 6


class Priority(IntEnum):
    CORE = 0
    NORMAL = 1
    LOW = 2


PRIORITY_NAMES = {Priority.CORE: "core", Priority.NORMAL: "normal", Priority.LOW: "low"}
KIND_NAMES = {
    Kind.PRETRAIN: "pretrain",
    Kind.FINETUNE: "finetune",
    Kind.INFERENCE: "inference",
    Kind.BATCH: "batch",
}
STATE_NAMES = {s: s.name.lower() for s in State}

# Activity levels of the phases (share of peak dynamic power). The collective phase of the measured 8xH100
# trace sits near 130-200 W on a 590 W compute phase; checkpoints write to storage with GPUs nearly idle.
ACT_COLLECTIVE = (0.08, 0.2)
ACT_COMPUTE = (0.93, 1.0)
ACT_CHECKPOINT = 0.05
ACT_STARTUP = (0.05, 0.45)
ON_GPU_STATES = (State.STARTING, State.RUNNING, State.CHECKPOINT, State.STALLED, State.PAUSED)


@dataclass
class JobSpec:
    """What a job asks for and how it behaves; the table below holds its evolving state."""

    name: str
    kind: Kind
    priority: Priority
    n_gpus: int
    work_s: float  # seconds of uncapped, unstraggled running needed to finish (inf: a service)
    iteration_s: float = 1.0
    compute_fraction: float = 0.7
    act_compute: float = 0.97
    act_collective: float = 0.15
    level: float = 0.8  # steady activity of batch jobs / peak activity of inference services
    checkpoint_interval_s: float = np.inf
    checkpoint_duration_s: float = 0.0
    startup_s: float = 60.0
    deferrable: bool = False
    work_done_s: float = 0.0


_FIELDS_F = (
    "cap_lost_gpu_s",
    "pause_lost_gpu_s",
    "work_s",
    "work_done_s",
    "last_ckpt_work_s",
    "iteration_s",
    "compute_fraction",
    "act_compute",
    "act_collective",
    "level",
    "ckpt_interval_s",
    "ckpt_duration_s",
    "startup_s",
    "phase",
    "speed",
    "straggle",
    "state_start_s",
    "state_end_s",
    "next_ckpt_s",
    "next_fail_s",
    "next_straggle_s",
    "straggle_end_s",
    "submit_s",
    "start_s",
    "end_s",
    "defer_until_s",
    "timer_s",
    "lost_work_s",
    "energy_j",
    "gpu_seconds",
    "throughput_lost_gpu_s",
    "fail_rate_per_s",
)
_FIELDS_I = ("kind", "priority", "n_gpus", "state", "failures", "checkpoints", "deferrable", "preemptions")


class JobTable:
    """Growable struct-of-arrays of every job the twin has seen (finished ones stay for the record)."""

    def __init__(self, capacity: int = 256) -> None:
        self.n = 0
        self.names: list[str] = []
        self.gpus: list[I64] = []
        self._cap = capacity
        for f in _FIELDS_F:
            setattr(self, f, np.zeros(capacity, dtype=np.float64))
        for f in _FIELDS_I:
            setattr(self, f, np.zeros(capacity, dtype=np.int64))

    # typed views for mypy and readers
    work_s: F64
    work_done_s: F64
    last_ckpt_work_s: F64
    iteration_s: F64
    compute_fraction: F64
    act_compute: F64
    act_collective: F64
    level: F64
    ckpt_interval_s: F64
    ckpt_duration_s: F64
    startup_s: F64
    phase: F64
    speed: F64
    straggle: F64
    state_start_s: F64
    state_end_s: F64
    next_ckpt_s: F64
    next_fail_s: F64
    next_straggle_s: F64
    straggle_end_s: F64
    submit_s: F64
    start_s: F64
    end_s: F64
    defer_until_s: F64
    timer_s: F64
    lost_work_s: F64
    energy_j: F64
    gpu_seconds: F64
    throughput_lost_gpu_s: F64
    fail_rate_per_s: F64
    cap_lost_gpu_s: F64  # GPU-seconds of work lost to power caps
    pause_lost_gpu_s: F64  # GPU-seconds held while paused by an operator or a controller
    kind: I64
    priority: I64
    n_gpus: I64
    state: I64
    failures: I64
    checkpoints: I64
    deferrable: I64
    preemptions: I64

    def _grow(self) -> None:
        self._cap *= 2
        for f in (*_FIELDS_F, *_FIELDS_I):
            old = getattr(self, f)
            new = np.zeros(self._cap, dtype=old.dtype)
            new[: old.size] = old
            setattr(self, f, new)

    def add(self, spec: JobSpec, submit_s: float, fail_rate_per_gpu_s: float) -> int:
        if self.n == self._cap:
            self._grow()
        j = self.n
        self.n += 1
        self.names.append(spec.name)
        self.gpus.append(np.empty(0, dtype=np.int64))
        self.kind[j] = spec.kind
        self.priority[j] = spec.priority
        self.n_gpus[j] = spec.n_gpus
        self.state[j] = State.QUEUED
        self.work_s[j] = spec.work_s
        self.work_done_s[j] = spec.work_done_s
        self.last_ckpt_work_s[j] = spec.work_done_s
        self.iteration_s[j] = spec.iteration_s
        self.compute_fraction[j] = spec.compute_fraction
        self.act_compute[j] = spec.act_compute
        self.act_collective[j] = spec.act_collective
        self.level[j] = spec.level
        self.ckpt_interval_s[j] = spec.checkpoint_interval_s
        self.ckpt_duration_s[j] = spec.checkpoint_duration_s
        self.startup_s[j] = spec.startup_s
        self.deferrable[j] = int(spec.deferrable)
        self.speed[j] = 1.0
        self.straggle[j] = 0.0
        self.submit_s[j] = submit_s
        self.start_s[j] = np.nan
        self.end_s[j] = np.nan
        self.defer_until_s[j] = -np.inf
        self.timer_s[j] = np.inf
        self.fail_rate_per_s[j] = fail_rate_per_gpu_s * spec.n_gpus
        for f in ("state_end_s", "next_ckpt_s", "next_fail_s", "next_straggle_s", "straggle_end_s"):
            getattr(self, f)[j] = np.inf
        return j

    def view(self, field: str) -> NDArray:
        """The live part of a column."""
        arr: NDArray = getattr(self, field)
        return arr[: self.n]


def compute_share(phase_start: F64, phase_end: F64, fraction: F64) -> F64:
    """Share of time spent in the compute phase between two iteration phases (iterations, float).

    Each iteration spends its first ``fraction`` in compute. With ``F(x) = floor(x) f + min(x - floor(x), f)``
    (compute time accumulated up to phase x, in iterations) the share is ``(F(end) - F(start)) / (end - start)``.
    """

    def cumulative(x: F64) -> F64:
        whole = np.floor(x)
        return np.asarray(whole * fraction + np.minimum(x - whole, fraction))

    span = phase_end - phase_start
    safe = np.where(span > 0, span, 1.0)
    share = (cumulative(phase_end) - cumulative(phase_start)) / safe
    return np.asarray(np.where(span > 0, share, fraction))
