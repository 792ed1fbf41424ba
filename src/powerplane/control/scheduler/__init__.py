"""The GPU pool scheduler: one pool of every GPU of the site, fractional requests, priority classes with
checkpoint-and-requeue preemption, weighted fair share between tenants, power-aware admission and deferral into
cheap or green windows, and a replay of the Alibaba openb GPU trace against a FIFO first-fit baseline.

- :mod:`.request`: what a job asks for (:class:`JobRequest`), priority classes, validation with reasons.
- :mod:`.pool`: per-GPU free capacity as arrays (:class:`GpuPool`).
- :mod:`.policy`: placement (binpack, spread, first-fit; gangs packed in a node, then a rack) and fragmentation.
- :mod:`.queue`: queued jobs by class, tenant and shape.
- :mod:`.scheduler`: :class:`Scheduler`, the decisions (:mod:`.config` its settings, :mod:`.job` its records,
  :mod:`.fitcache` its "does not fit" caches).
- :mod:`.isolation`: nodes down/up and single GPUs cordoned/uncordoned/evicted (self-healing).
- :mod:`.preempt`: victim choice; :mod:`.rebalance`: the periodic pass; :mod:`.plan`: cheap/green windows;
  :mod:`.timeline`: expected start and end of every job for the forecaster.
- :mod:`.replay`: discrete-event replay of the openb trace with metrics.
"""

from powerplane.control.scheduler.config import SchedulerConfig
from powerplane.control.scheduler.job import StepResult
from powerplane.control.scheduler.pool import GpuPool
from powerplane.control.scheduler.request import (
    DEFAULT_CLASSES,
    Admission,
    JobRequest,
    PriorityClass,
)
from powerplane.control.scheduler.scheduler import Scheduler
from powerplane.control.scheduler.timeline import Timeline

__all__ = [
    "DEFAULT_CLASSES",
    "Admission",
    "GpuPool",
    "JobRequest",
    "PriorityClass",
    "Scheduler",
    "SchedulerConfig",
    "StepResult",
    "Timeline",
]
