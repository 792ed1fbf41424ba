"""The GPU pool scheduler: admission, ordering, placement, preemption from checkpoints, power and windows.

One :class:`Scheduler` owns a :class:`~powerplane.control.scheduler.pool.GpuPool` and every job submitted to
it. Time is passed in (``now_s``, seconds since the epoch, or any consistent origin): the scheduler never reads a
clock. The environment (the twin, the replay, the runtime) tells it when jobs finish; it answers each
:meth:`Scheduler.schedule_step` with the jobs it started and preempted.

Order (``order="priority"``): classes by weight, highest first; inside a class the tenant with the lowest
usage / weight goes next (weighted fair share), and inside a tenant the earliest submission among the shapes that
may still fit. Jobs that do not fit are skipped (backfill), never block the queue. A job that does not fit may
preempt preemptible jobs of strictly lower weight: the cheapest victim set is chosen (cost = weight x (GPU-seconds
lost since the victim's last checkpoint + a restart charge)), and each victim is requeued keeping its progress up
to its last checkpoint. ``order="fifo"`` is the baseline: strict submission order, the head blocks the queue.

Caches: a shape that failed to fit keeps failing while capacity only shrinks. Every release marks its nodes dirty;
before the next decision each failed shape is re-tested on the dirty nodes only (:mod:`.fitcache`). The same holds
for "does not fit even after preempting every lower-class job": that potential capacity also only grows on releases.

Nodes and single GPUs leave and return through :mod:`.isolation` (node down/up, GPU cordon/uncordon/evict).
"""

from __future__ import annotations

import heapq
import math
from bisect import insort
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from powerplane.control.scheduler import fitcache, isolation, preempt, rebalance
from powerplane.control.scheduler.config import PowerEstimate, SchedulerConfig
from powerplane.control.scheduler.job import CANCELLED, DONE, QUEUED, RUNNING, STATE_NAMES, Job, StepResult
from powerplane.control.scheduler.plan import EnergyPlan
from powerplane.control.scheduler.policy import NodeSubset, mem_need_mib, place
from powerplane.control.scheduler.pool import GpuPool
from powerplane.control.scheduler.queue import Entry, JobQueue
from powerplane.control.scheduler.request import (
    MILLI_PER_GPU,
    Admission,
    JobRequest,
    PriorityClass,
    Shape,
    check_request,
)
from powerplane.control.scheduler.timeline import Timeline, project

I64 = NDArray[np.int64]


class Scheduler:
    """Schedules jobs on a :class:`GpuPool`. See the module docstring for the rules."""

    def __init__(self, pool: GpuPool, config: SchedulerConfig | None = None) -> None:
        self.pool = pool
        self.config = config or SchedulerConfig()
        classes = sorted(self.config.classes, key=lambda c: -c.weight)
        self.classes: list[PriorityClass] = classes
        self._class_index = {c.name: i for i, c in enumerate(classes)}
        self._class_names = tuple(c.name for c in classes)
        self.jobs: list[Job] = []
        self._by_name: dict[str, Job] = {}
        self.queue = JobQueue(len(classes))
        self._fifo: list[Entry] = []
        self.running: dict[int, Job] = {}
        self._node_jobs: list[set[int]] = [set() for _ in range(pool.n_nodes)]
        n_cls, g = len(classes), pool.n_gpus
        self.pre_milli = np.zeros((n_cls, g), dtype=np.int64)  # preemptible allocation per class
        self.pre_mem_mib = np.zeros((n_cls, g), dtype=np.int64)
        # Potential free capacity per class that may preempt: free + preemptible allocations of lower classes.
        self._preemptors = [c for c in range(n_cls) if self._may_preempt(c)]
        self.pot_milli = {c: pool.free_milli.copy() for c in self._preemptors}
        self.pot_mem_mib = {c: pool.free_mem_mib.copy() for c in self._preemptors}
        self.tenant_usage_milli: dict[str, int] = {}
        self._seq = 0
        self._failed: set[Shape] = set()
        self._pfailed: set[tuple[int, Shape]] = set()
        # Shapes taken off the failed sets by the last refreshes: they can only fit on these nodes.
        self._revived: dict[Shape, frozenset[int]] = {}
        self._previved: dict[tuple[int, Shape], frozenset[int]] = {}
        self._subsets: dict[tuple[frozenset[int], int], NodeSubset] = {}  # cleared on every capacity change
        self._dirty_nodes: list[int] = []
        self._force_heap: list[tuple[float, int]] = []
        self.budget_w = math.inf
        self.committed_w = 0.0
        self._estimate: PowerEstimate = self._default_estimate
        self.plan = EnergyPlan(self.config.cheap_quantile)
        self.rejected: list[Admission] = []
        self.n_preemptions = 0
        self.n_node_requeues = 0
        self.n_gpu_requeues = 0
        self.lost_work_gpu_s = 0.0

    # ------------------------------------------------------------------ submission and lifecycle

    def submit(self, request: JobRequest, now_s: float) -> Admission:
        """Queue a request, or reject it with the reason when it can never fit (the pool does not change)."""
        if request.name in self._by_name:
            return self._reject(request.name, f"a job named {request.name!r} was already submitted")
        shape, reason = check_request(request, self.pool, self._class_names, self.config.allowed_fractions)
        if shape is None:
            return self._reject(request.name, reason)
        cls = self._class_index[request.priority]
        pc = self.classes[cls]
        deferred = request.deferrable and self.config.order == "priority"
        if request.deadline_s is not None:
            force = request.deadline_s - max(request.est_duration_s - request.work_done_s, 0.0)
        else:
            force = now_s + self.config.max_defer_s
        job = Job(
            id=len(self.jobs),
            request=request,
            shape=shape,
            cls=cls,
            weight=pc.weight,
            preemptible=pc.preemptible and request.preemptible,
            submit_s=now_s,
            seq=self._next_seq(),
            order_s=now_s,
            deferred=deferred,
            force_at_s=force if deferred else math.inf,
            work_done_s=request.work_done_s,
            ckpt_work_s=request.work_done_s,
        )
        self.jobs.append(job)
        self._by_name[request.name] = job
        self._enqueue(job)
        if deferred:
            heapq.heappush(self._force_heap, (job.force_at_s, job.id))
        return Admission(True, request.name)

    def cancel(self, name: str, now_s: float) -> bool:
        """Withdraw a queued job or stop a running one (its GPUs return to the pool)."""
        job = self._by_name.get(name)
        if job is None or job.state in (DONE, CANCELLED):
            return False
        if job.state == QUEUED:
            self._dequeue(job)
        else:
            job.work_done_s = job.progress_s(now_s)
            self._release(job)
        job.state = CANCELLED
        job.end_s = now_s
        return True

    def finish(self, name: str, now_s: float) -> None:
        """A running job completed: release its GPUs."""
        job = self._by_name[name]
        if job.state != RUNNING:
            raise ValueError(f"job {name!r} is {STATE_NAMES[job.state]}, not running")
        job.work_done_s = job.progress_s(now_s)
        self._release(job)
        job.state = DONE
        job.end_s = now_s

    def record_checkpoint(self, name: str, now_s: float) -> None:
        """A running job wrote a checkpoint: a preemption now loses nothing."""
        job = self._by_name[name]
        if job.state == RUNNING:
            job.ckpt_work_s = job.progress_s(now_s)

    def report_usage(self, name: str, used_share: float, now_s: float) -> None:
        """Share of its allocation a running job uses [0..1] (e.g. DCGM SM activity / allocation), for rebalance."""
        job = self._by_name[name]
        job.used_share = float(used_share)
        if used_share < self.config.idle_threshold:
            job.idle_since_s = min(job.idle_since_s, now_s)
        else:
            job.idle_since_s = math.inf

    def preempt(self, name: str, now_s: float, to_back: bool = False) -> float:
        """Checkpoint-and-requeue a running job; returns the work lost [s of running] since its last checkpoint."""
        job = self._by_name[name]
        if job.state != RUNNING:
            raise ValueError(f"job {name!r} is {STATE_NAMES[job.state]}, not running")
        lost = self._stop(job, now_s)
        self.n_preemptions += 1
        self._requeue(job, now_s, to_back)
        return lost

    # ------------------------------------------------------------------ nodes and GPUs (see .isolation)

    def node_index(self, node: int | str) -> int:
        return isolation.node_index(self, node)

    def node_down(self, node: int | str, now_s: float) -> list[str]:
        """A node disappeared: every job on it is stopped, keeps its checkpointed progress and is requeued."""
        return isolation.node_down(self, node, now_s)

    def node_up(self, node: int | str, now_s: float) -> None:
        """A node came back: its capacity returns to the pool (its cordoned GPUs stay out)."""
        isolation.node_up(self, node, now_s)

    def cordon_gpu(self, gpu: int, now_s: float) -> list[str]:
        """Nothing new is placed on ``gpu``; returns the jobs still on it (moved only by :meth:`evict_gpu`)."""
        return isolation.cordon_gpu(self, gpu, now_s)

    def evict_gpu(self, gpu: int, now_s: float) -> list[str]:
        """Requeue the jobs on ``gpu`` from their last checkpoint; returns their names."""
        return isolation.evict_gpu(self, gpu, now_s)

    def uncordon_gpu(self, gpu: int, now_s: float) -> bool:
        """Return a cordoned GPU to placement; False when it was not cordoned."""
        return isolation.uncordon_gpu(self, gpu, now_s)

    # ------------------------------------------------------------------ power and windows

    def set_power_budget(self, budget_w: float, estimate_fn: PowerEstimate | None = None) -> None:
        """Site power the running jobs may draw [W] (from energy management); ``estimate_fn`` estimates one job.

        Jobs that would push the committed draw past the budget do not start, except in classes configured with
        ``may_exceed_power_budget``. Running jobs are not stopped (see :meth:`shed_power`).
        """
        self.budget_w = float(budget_w)
        if estimate_fn is not None:
            self._estimate = estimate_fn
            self.committed_w = sum(self._power_of(j, j.gpus, j.milli) for j in self.running.values())
            for j in self.running.values():
                j.power_w = self._power_of(j, j.gpus, j.milli)

    def _default_estimate(self, request: JobRequest, gpus: I64, milli: int) -> float:
        return float(self.pool.draw_w[gpus].sum()) * milli / MILLI_PER_GPU

    def _power_of(self, job: Job, gpus: I64, milli: int) -> float:
        if job.request.power_w is not None:
            return float(job.request.power_w)
        return float(self._estimate(job.request, gpus, milli))

    def shed_power(self, now_s: float) -> list[str]:
        """Preempt the cheapest preemptible jobs (lowest weight, least work lost per watt) until the committed
        draw is within the budget; returns their names."""
        out: list[str] = []
        if self.committed_w <= self.budget_w:
            return out
        cands = [j for j in self.running.values() if j.preemptible]
        cands.sort(key=lambda j: (j.weight, preempt.victim_cost(self, j, now_s) / max(j.power_w, 1e-9)))
        for job in cands:
            if self.committed_w <= self.budget_w:
                break
            self.preempt(job.request.name, now_s)
            out.append(job.request.name)
        return out

    def set_plan(self, windows: Sequence[tuple[float, float, float]]) -> None:
        """Windows of the energy plan, (start_s, end_s, cost) each, cost lower is better (see
        :class:`~powerplane.control.scheduler.plan.EnergyPlan`). Deferrable jobs start only in cheap windows."""
        self.plan.set(windows)

    def is_cheap(self, t_s: float) -> bool:
        return self.plan.is_cheap(t_s)

    def next_cheap_s(self, t_s: float) -> float:
        return self.plan.next_cheap_s(t_s)

    # ------------------------------------------------------------------ the decision

    def schedule_step(self, now_s: float) -> StepResult:
        """Start every queued job that may start now (preempting lower classes where allowed)."""
        result = StepResult()
        if not len(self.queue) and not self._fifo:
            return result
        self._release_forced(now_s)
        fitcache.refresh_failed(self)
        if self.config.order == "fifo":
            self._step_fifo(now_s, result)
        else:
            self._step_priority(now_s, result)
        return result

    def _step_fifo(self, now_s: float, result: StepResult) -> None:
        while self._fifo:
            job = self.jobs[self._fifo[0][2]]
            if not self._try_start(job, now_s, result):
                return

    def _step_priority(self, now_s: float, result: StepResult) -> None:
        cheap = self.is_cheap(now_s)
        for c in range(len(self.classes)):
            counts = self.queue.shape_counts[c]
            if not counts:
                continue
            can_preempt = self._may_preempt(c)
            blocked = {s for s in counts if fitcache.blocked(self, c, s, can_preempt)}
            if len(blocked) == len(counts):
                continue
            heap = [(self._tenant_share(t), t) for t in self.queue.tenants(c)]
            heapq.heapify(heap)
            while heap:
                _, tenant = heapq.heappop(heap)
                head = self.queue.head(c, tenant, blocked, cheap)
                if head is None:
                    continue
                job = self.jobs[head[1][2]]
                if not self._try_start(job, now_s, result, can_preempt):
                    blocked.add(job.shape)
                elif self._revived or self._previved:  # the start used capacity revived shapes counted on
                    blocked.update(s for s in counts if s not in blocked and fitcache.blocked(self, c, s, can_preempt))
                if tenant in self.queue.groups[c]:
                    heapq.heappush(heap, (self._tenant_share(tenant), tenant))

    def _try_start(self, job: Job, now_s: float, result: StepResult, can_preempt: bool = False) -> bool:
        """Place and start one job, preempting if needed and allowed; False when it cannot start now (a shape
        that does not fit is cached as such; a job refused for power is not)."""
        shape = job.shape
        pool = self.pool
        gpus = None
        if shape not in self._failed:
            nodes = self._revived.pop(shape, None)
            if nodes is None or fitcache.subset(self, nodes, -1).fits(shape) is not False:
                gpus = place(pool, shape, self.config.policy)
        if gpus is None:
            self._failed.add(shape)
            pkey = (job.cls, shape)
            if not can_preempt or pkey in self._pfailed:
                return False
            if not self._power_ok(job, self._min_power_w(job)):
                return False
            nodes = self._previved.pop(pkey, None)
            if nodes is not None and fitcache.subset(self, nodes, job.cls).fits(shape) is False:
                self._pfailed.add(pkey)
                return False
            victims = preempt.choose_victims(self, job, now_s)
            if victims is None:
                self._pfailed.add(pkey)
                return False
            for v in victims:
                name = self.jobs[v].request.name
                self.preempt(name, now_s)
                result.preempted.append(name)
            fitcache.refresh_failed(self)
            gpus = place(self.pool, shape, self.config.policy)
            if gpus is None:  # victims freed the room on paper only (cannot happen: choose_victims verified it)
                raise RuntimeError(f"preemption for {job.request.name!r} did not make room")
        power = self._power_of(job, gpus, shape.milli)
        if not self._power_ok(job, power):
            return False
        self._start(job, gpus, now_s, power)
        result.started.append(job.request.name)
        return True

    def _power_ok(self, job: Job, power_w: float) -> bool:
        return self.committed_w + power_w <= self.budget_w or self.classes[job.cls].may_exceed_power_budget

    def _min_power_w(self, job: Job) -> float:
        """A lower bound of a job's draw before it is placed (0 when a custom estimate is in use)."""
        if job.request.power_w is not None:
            return float(job.request.power_w)
        if self._estimate != self._default_estimate:
            return 0.0
        draw = self.pool.draw_w[self.pool.model_gpu_mask(job.shape.models)]
        return float(draw.min()) * job.shape.total_milli / MILLI_PER_GPU

    def _may_preempt(self, c: int) -> bool:
        w = self.classes[c].weight
        return self.config.preemption and any(k.weight < w and k.preemptible for k in self.classes)

    def _tenant_share(self, tenant: str) -> float:
        return self.tenant_usage_milli.get(tenant, 0) / self.config.tenant_weights.get(tenant, 1.0)

    # ------------------------------------------------------------------ rebalance

    def rebalance(self, now_s: float) -> StepResult:
        """The periodic pass (every 15-30 min, :attr:`SchedulerConfig.rebalance_interval_s`): see
        :func:`powerplane.control.scheduler.rebalance.rebalance`."""
        return rebalance.rebalance(self, now_s)

    def _resize(self, job: Job, milli: int) -> None:
        """Change a running job's compute share on each of its GPUs (memory stays)."""
        zero = np.zeros(job.gpus.size, dtype=np.int64)
        delta = milli - job.milli
        if not job.explicit_mem:  # memory stays while compute moves: no longer proportional
            job.explicit_mem = True
            self.pool.explicit_mem_allocations += 1
        if delta < 0:
            self.pool.release(job.gpus, -delta, zero)
            self._dirty_nodes.extend(self._nodes_of(job.gpus))
        else:
            self.pool.allocate(job.gpus, delta, zero)
        if job.preemptible:
            self.pre_milli[job.cls, job.gpus] += delta
        self._shift_potential(job, job.gpus, -delta, 0)
        t = job.request.tenant
        self.tenant_usage_milli[t] = self.tenant_usage_milli.get(t, 0) + delta * int(job.gpus.size)
        job.milli = milli
        self.committed_w -= job.power_w
        job.power_w = self._power_of(job, job.gpus, milli)
        self.committed_w += job.power_w

    # ------------------------------------------------------------------ views

    def job(self, name: str) -> Job:
        return self._by_name[name]

    def allocation(self, name: str) -> I64:
        """GPU indices a running job holds (empty otherwise)."""
        return self._by_name[name].gpus

    @property
    def n_queued(self) -> int:
        return len(self._fifo) if self.config.order == "fifo" else len(self.queue)

    def queued_jobs(self) -> list[Job]:
        """Queued jobs in scheduling order (class, then submission)."""
        if self.config.order == "fifo":
            return [self.jobs[e[2]] for e in self._fifo]
        out: list[Job] = []
        for c in range(len(self.classes)):
            out.extend(sorted((self.jobs[e[2]] for _, _, e in self.queue.entries(c)), key=lambda j: j.entry))
        return out

    def expected_timeline(self, now_s: float) -> Timeline:
        """Expected start and end of every queued and running job, for the forecaster (see
        :func:`powerplane.control.scheduler.timeline.project`)."""
        return project(self, now_s)

    def next_wakeup_s(self, now_s: float) -> float:
        """When the queue may change without an event: a deferral deadline or the next cheap window."""
        t = self._force_heap[0][0] if self._force_heap else math.inf
        if any(k.deferred for c in range(len(self.classes)) for g in self.queue.groups[c].values() for k in g):
            t = min(t, self.next_cheap_s(now_s) if not self.is_cheap(now_s) else math.inf)
        return max(t, now_s)

    # ------------------------------------------------------------------ internals

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _reject(self, name: str, reason: str) -> Admission:
        a = Admission(False, name, reason)
        self.rejected.append(a)
        return a

    def _enqueue(self, job: Job) -> None:
        job.state = QUEUED
        if self.config.order == "fifo":
            insort(self._fifo, job.entry)
        else:
            self.queue.push(job.cls, job.request.tenant, job.key, job.entry)

    def _dequeue(self, job: Job) -> None:
        if self.config.order == "fifo":
            self._fifo.remove(job.entry)
        else:
            self.queue.remove(job.cls, job.request.tenant, job.key, job.entry)

    def _requeue(self, job: Job, now_s: float, to_back: bool) -> None:
        if to_back:
            job.order_s = now_s
            job.seq = self._next_seq()
        self._enqueue(job)

    def _release_forced(self, now_s: float) -> None:
        """Deferrable jobs whose deadline is near stop waiting for a window."""
        while self._force_heap and self._force_heap[0][0] <= now_s:
            _, j = heapq.heappop(self._force_heap)
            job = self.jobs[j]
            if job.deferred:
                if job.state == QUEUED:
                    self._dequeue(job)
                    job.deferred = False
                    self._enqueue(job)
                else:
                    job.deferred = False

    def _start(self, job: Job, gpus: I64, now_s: float, power_w: float) -> None:
        self._dequeue(job)
        mem = mem_need_mib(self.pool, job.shape, gpus)
        mem_arr = mem if isinstance(mem, np.ndarray) else np.full(gpus.size, mem, dtype=np.int64)
        job.explicit_mem = job.shape.mem_mib > 0
        self.pool.allocate(gpus, job.shape.milli, mem_arr, explicit_mem=job.explicit_mem)
        job.state = RUNNING
        job.gpus, job.milli, job.mem_mib = gpus, job.shape.milli, mem_arr
        job.run_start_s = now_s
        job.ckpt_work_s = job.work_done_s
        job.idle_since_s = math.inf
        job.used_share = math.nan
        if math.isnan(job.first_start_s):
            job.first_start_s = now_s
        job.power_w = power_w
        self.committed_w += power_w
        self.running[job.id] = job
        for n in self._nodes_of(gpus):
            self._node_jobs[n].add(job.id)
        if job.preemptible:
            self.pre_milli[job.cls, gpus] += job.milli
            self.pre_mem_mib[job.cls, gpus] += mem_arr
        self._shift_potential(job, gpus, -job.milli, -mem_arr)
        t = job.request.tenant
        self.tenant_usage_milli[t] = self.tenant_usage_milli.get(t, 0) + job.milli * int(gpus.size)

    def _release(self, job: Job) -> None:
        gpus = job.gpus
        self.pool.release(gpus, job.milli, job.mem_mib, explicit_mem=job.explicit_mem)
        nodes = self._nodes_of(gpus)
        for n in nodes:
            self._node_jobs[n].discard(job.id)
        self._dirty_nodes.extend(nodes)
        if job.preemptible:
            self.pre_milli[job.cls, gpus] -= job.milli
            self.pre_mem_mib[job.cls, gpus] -= job.mem_mib
        self._shift_potential(job, gpus, job.milli, job.mem_mib)
        t = job.request.tenant
        self.tenant_usage_milli[t] -= job.milli * int(gpus.size)
        self.committed_w -= job.power_w
        del self.running[job.id]
        job.gpus = np.zeros(0, dtype=np.int64)
        job.mem_mib = np.zeros(0, dtype=np.int64)
        job.milli = 0
        job.power_w = 0.0

    def _shift_potential(self, job: Job, gpus: I64, d_milli: int, d_mem: I64 | int) -> None:
        """Move the potential of every preempting class the job is not a victim for (free capacity changed);
        cordoned GPUs keep none."""
        self._subsets.clear()
        if self.pool.n_cordoned:
            keep = ~self.pool.gpu_cordoned[gpus]
            if not keep.all():
                gpus = gpus[keep]
                d_mem = d_mem[keep] if isinstance(d_mem, np.ndarray) else d_mem
        for c in self._preemptors:
            if not (job.preemptible and job.weight < self.classes[c].weight):
                self.pot_milli[c][gpus] += d_milli
                self.pot_mem_mib[c][gpus] += d_mem

    def _nodes_of(self, gpus: I64) -> list[int]:
        if gpus.size == 1:
            return [int(self.pool.gpu_node[gpus[0]])]
        return np.unique(self.pool.gpu_node[gpus]).tolist()

    def _stop(self, job: Job, now_s: float) -> float:
        """Stop a running job at its last checkpoint; returns the work lost [s of running]."""
        done = job.progress_s(now_s)
        saved = job.checkpoint_s(now_s)
        lost = done - saved
        job.lost_work_s += lost
        job.preemptions += 1
        self.lost_work_gpu_s += lost * job.shape.total_milli / MILLI_PER_GPU
        self._release(job)
        job.work_done_s = saved
        job.ckpt_work_s = saved
        return lost
