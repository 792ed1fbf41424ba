"""The scheduler's record of a job, and what a decision returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from powerplane.control.scheduler.queue import Entry, GroupKey
from powerplane.control.scheduler.request import JobRequest, Shape

I64 = NDArray[np.int64]

QUEUED, RUNNING, DONE, CANCELLED = 0, 1, 2, 3  # job states
STATE_NAMES = {QUEUED: "queued", RUNNING: "running", DONE: "done", CANCELLED: "cancelled"}


@dataclass(frozen=True)
class StepResult:
    """What a decision did: jobs started and jobs preempted (checkpointed and requeued), by name."""

    started: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Job:
    """The scheduler's record of one job. ``work_done_s`` is progress [s of running] when last stopped."""

    id: int
    request: JobRequest
    shape: Shape
    cls: int
    weight: float
    preemptible: bool
    submit_s: float
    seq: int
    order_s: float
    deferred: bool
    force_at_s: float
    state: int = QUEUED
    gpus: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    milli: int = 0
    mem_mib: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    power_w: float = 0.0
    explicit_mem: bool = False  # memory not in proportion to compute (a HAMi figure, or a shrunk allocation)
    first_start_s: float = math.nan
    run_start_s: float = math.nan
    end_s: float = math.nan
    work_done_s: float = 0.0
    ckpt_work_s: float = 0.0
    lost_work_s: float = 0.0
    preemptions: int = 0
    used_share: float = math.nan
    idle_since_s: float = math.inf

    @property
    def entry(self) -> Entry:
        return (self.order_s, self.seq, self.id)

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.shape, self.deferred)

    def progress_s(self, now_s: float) -> float:
        """Work done [s of running] at ``now_s``."""
        if self.state != RUNNING:
            return self.work_done_s
        return self.work_done_s + max(now_s - self.run_start_s, 0.0)

    def checkpoint_s(self, now_s: float) -> float:
        """Work saved by the last checkpoint at ``now_s`` (periodic since the run started, or reported)."""
        if self.state != RUNNING:
            return self.work_done_s
        ran = max(now_s - self.run_start_s, 0.0)
        interval = self.request.checkpoint_interval_s
        periodic = self.work_done_s + (math.floor(ran / interval) * interval if math.isfinite(interval) else 0.0)
        return max(periodic, self.ckpt_work_s)
