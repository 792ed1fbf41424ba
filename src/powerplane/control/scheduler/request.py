"""What a job asks of the GPU pool, the priority classes, and the checks that reject impossible requests.

A request is whole GPUs (``gpus=8``), a fraction of one or more GPUs of one node (``fraction=0.25``: 1/8, 1/4
and 1/2 by default), or a HAMi-style share: ``compute_pct`` percent of each GPU's compute (HAMi ``gpucores``)
and optionally ``mem_mib`` of its memory (HAMi ``gpumem``). Internally every request becomes a :class:`Shape`:
GPUs, thousandths of each GPU ("milli", 1000 = a whole GPU), MiB of each GPU's memory (0: in proportion to the
milli) and the accepted GPU models. Jobs of one shape are interchangeable for placement, which is what lets the
scheduler cache "this shape does not fit" across 5,000 queued jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from powerplane.control.scheduler.pool import GpuPool

MILLI_PER_GPU = 1000


@dataclass(frozen=True)
class PriorityClass:
    """A priority class. ``weight`` in (0, 1]: higher classes are scheduled first and may preempt jobs of
    strictly lower weight; a victim's weight is also its cost. ``may_exceed_power_budget`` lets the class start
    jobs past the site power budget (core work that must run during a demand-response event)."""

    name: str
    weight: float
    preemptible: bool = True
    may_exceed_power_budget: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"priority class {self.name!r}: weight must be in (0, 1], got {self.weight}")


# Defaults: core 0.8-1.0, normal 0.4-0.6, low 0.1-0.3 (the middle of each band). Core is never preempted.
DEFAULT_CLASSES: tuple[PriorityClass, ...] = (
    PriorityClass("core", 0.9, preemptible=False),
    PriorityClass("normal", 0.5),
    PriorityClass("low", 0.2),
)

# Fractions a ``fraction=`` request may ask for (HAMi-style ``compute_pct`` requests may ask any whole percent).
DEFAULT_FRACTIONS: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1.0)


class Shape(NamedTuple):
    """What placement needs of a request: hashable, so that queued jobs group by shape.

    gpus: number of GPUs; milli: thousandths of each GPU [1..1000]; mem_mib: MiB of each GPU's memory, 0 when in
    proportion to ``milli``; models: indices of accepted GPU models in the pool (sorted), or None for any.
    """

    gpus: int
    milli: int
    mem_mib: int
    models: tuple[int, ...] | None

    @property
    def whole(self) -> bool:
        return self.milli == MILLI_PER_GPU and self.mem_mib == 0

    @property
    def total_milli(self) -> int:
        return self.gpus * self.milli


@dataclass(frozen=True)
class JobRequest:
    """A job's request to the pool.

    name: unique job name.
    gpus: number of GPUs [-]; a fractional request shares ``gpus`` distinct GPUs of one node.
    fraction: share of each GPU [-], 1 for whole GPUs.
    compute_pct: HAMi ``gpucores``, percent of each GPU's compute [%]; overrides ``fraction``.
    mem_mib: HAMi ``gpumem``, memory of each GPU [MiB]; None: in proportion to the compute share.
    model: accepted GPU model name(s); ``"vendor:AMD"`` accepts every model of a vendor; None accepts any.
    priority: priority class name; tenant: the tenant or queue that fair share is computed over.
    deferrable: may wait for a cheap or green window of the plan, until ``deadline_s`` (absolute [s]) minus its
    duration, or the scheduler's ``max_defer_s`` after submission when no deadline is given.
    est_duration_s: expected running time [s] (for the expected timeline); checkpoint_interval_s: running time
    between checkpoints [s] (inf: none, a preempted job restarts from ``work_done_s``).
    work_done_s: progress already made [s of running] (a job resuming from a checkpoint).
    preemptible: False pins the job even in a preemptible class.
    power_w: the job's own power estimate [W]; None lets the scheduler estimate it.
    """

    name: str
    gpus: int = 1
    fraction: float = 1.0
    compute_pct: int | None = None
    mem_mib: int | None = None
    model: str | tuple[str, ...] | None = None
    priority: str = "normal"
    tenant: str = "default"
    deferrable: bool = False
    deadline_s: float | None = None
    est_duration_s: float = 3600.0
    checkpoint_interval_s: float = math.inf
    work_done_s: float = 0.0
    preemptible: bool = True
    power_w: float | None = None

    @property
    def milli(self) -> int:
        """Thousandths of each GPU asked for."""
        if self.compute_pct is not None:
            return int(self.compute_pct) * 10
        return round(self.fraction * MILLI_PER_GPU)

    @property
    def hami(self) -> bool:
        """True for a HAMi-style request (compute percent and/or memory MiB)."""
        return self.compute_pct is not None or self.mem_mib is not None

    @property
    def model_names(self) -> tuple[str, ...] | None:
        if self.model is None:
            return None
        return (self.model,) if isinstance(self.model, str) else tuple(self.model)


@dataclass(frozen=True)
class Admission:
    """The answer to a submission: accepted, or rejected with the reason."""

    accepted: bool
    name: str
    reason: str = ""


def resolve_models(request: JobRequest, pool: GpuPool) -> tuple[tuple[int, ...] | None, str]:
    """Model indices a request accepts, or (None, reason) when it names a model or vendor the pool lacks.

    Returns ``(None, "")`` when the request accepts any model.
    """
    names = request.model_names
    if names is None:
        return None, ""
    idx: set[int] = set()
    for name in names:
        if name.startswith("vendor:"):
            vendor = name.split(":", 1)[1].lower()
            hits = [i for i, v in enumerate(pool.vendors) if v.lower() == vendor]
            if not hits:
                return None, f"unknown GPU vendor {vendor!r}; pool vendors: {', '.join(sorted(set(pool.vendors)))}"
            idx.update(hits)
        elif name in pool.models:
            idx.add(pool.models.index(name))
        else:
            return None, f"unknown GPU model {name!r}; pool models: {', '.join(pool.models)}"
    return tuple(sorted(idx)), ""


def check_request(
    request: JobRequest,
    pool: GpuPool,
    class_names: tuple[str, ...],
    allowed_fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
) -> tuple[Shape | None, str]:
    """Shape of a request, or (None, reason) when it can never be served by this pool."""
    if not request.name:
        return None, "a job needs a name"
    if request.priority not in class_names:
        return None, f"unknown priority class {request.priority!r}; classes: {', '.join(class_names)}"
    if request.gpus < 1:
        return None, f"gpus must be at least 1, got {request.gpus}"
    if not request.est_duration_s > 0:
        return None, f"est_duration_s must be positive, got {request.est_duration_s}"
    if not request.checkpoint_interval_s > 0:
        return None, f"checkpoint_interval_s must be positive, got {request.checkpoint_interval_s}"
    if request.work_done_s < 0:
        return None, f"work_done_s must not be negative, got {request.work_done_s}"
    if request.compute_pct is not None and not 1 <= request.compute_pct <= 100:
        return None, f"compute_pct must be 1-100 %, got {request.compute_pct}"
    if request.mem_mib is not None and request.mem_mib < 1:
        return None, f"mem_mib must be at least 1 MiB, got {request.mem_mib}"
    if not request.hami:
        allowed_milli = {round(f * MILLI_PER_GPU) for f in allowed_fractions}
        if not 0.0 < request.fraction <= 1.0 or abs(request.fraction * MILLI_PER_GPU - request.milli) > 1e-6:
            return None, f"fraction {request.fraction:g} not allowed; allowed: {_fraction_list(allowed_fractions)}"
        if request.milli not in allowed_milli:
            return None, f"fraction {request.fraction:g} not allowed; allowed: {_fraction_list(allowed_fractions)}"
    models, reason = resolve_models(request, pool)
    if reason:
        return None, reason
    milli = request.milli
    mem = int(request.mem_mib or 0)
    shape = Shape(request.gpus, milli, mem, models)
    mask = pool.model_gpu_mask(models)
    n_avail = int(mask.sum())
    label = "" if models is None else f" of model {'/'.join(pool.models[i] for i in models)}"
    if request.gpus > n_avail:
        return None, f"needs {request.gpus} GPUs, the pool has {n_avail}{label}"
    per_node = int(pool.node_n_gpus[pool.model_node_mask(models)].max())
    if not shape.whole and request.gpus > per_node:
        return None, (
            f"a fractional request shares GPUs of one node: at most {per_node} GPUs{label}, asked {request.gpus}"
        )
    if mem:
        largest = int(pool.mem_mib_capacity[mask].max())
        if mem > largest:
            return None, f"needs {mem} MiB per GPU, the largest GPU{label} has {largest} MiB"
    return shape, ""


def _fraction_list(fractions: tuple[float, ...]) -> str:
    out = []
    for f in sorted(fractions):
        if f == 1.0:
            out.append("1")
        else:
            inv = 1.0 / f
            out.append(f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{f:g}")
    return ", ".join(out)
