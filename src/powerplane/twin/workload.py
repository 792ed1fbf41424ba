"""The twin's workload engine: job arrivals, a simple gang placement, job state events and per-job activity.

Time advances in *segments* between events (a checkpoint, a fault, a restart, a straggler, a job's end, an arrival).
Inside a segment no job changes state, so the activity of every job over all its steps is one vectorized
expression; events are handled at step boundaries. The GPU pool scheduler (its own issue) replaces the placement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.control.scheduler.config import SchedulerConfig
from powerplane.control.scheduler.pool import GpuPool
from powerplane.control.scheduler.request import JobRequest
from powerplane.control.scheduler.scheduler import Scheduler
from powerplane.topology import Topology
from powerplane.twin import traces
from powerplane.twin.arrivals import JobFactory
from powerplane.twin.jobs import (
    ACT_CHECKPOINT,
    ACT_STARTUP,
    PRIORITY_NAMES,
    JobSpec,
    JobTable,
    Kind,
    Priority,
    State,
    compute_share,
)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# Plain ints for the hot paths (IntEnum attribute access costs ~1 us each).
_STARTING, _RUNNING, _CHECKPOINT = int(State.STARTING), int(State.RUNNING), int(State.CHECKPOINT)
_STALLED, _PAUSED, _DONE = int(State.STALLED), int(State.PAUSED), int(State.DONE)
_PRETRAIN, _FINETUNE, _INFERENCE, _BATCH = (
    int(Kind.PRETRAIN),
    int(Kind.FINETUNE),
    int(Kind.INFERENCE),
    int(Kind.BATCH),
)

# Xid codes a job-stalling fault is drawn from, with weights (NVIDIA Xid catalog; Llama 3 reports most
# interruptions as hardware: GPU, HBM, NVLink, GSP).
XID_CODES = np.array([79, 48, 94, 95, 74, 119, 13, 31, 43, 63, 92], dtype=np.int64)
XID_WEIGHTS = np.array([12, 10, 14, 4, 12, 8, 12, 10, 8, 5, 5], dtype=np.float64)


@dataclass
class XidEvent:
    t_s: float
    job: int
    gpu: int
    xid: int


@dataclass
class BlockActivity:
    """What :meth:`Workload.advance` returns: per-job activity and where the GPU->job mapping changed."""

    activity: NDArray[np.float32]  # [T, len(column_jobs) + 1]; column 0 is "no job" (activity 0)
    mapping_changes: list[tuple[int, I64]]  # (step, column of each GPU from that step on); the first is at step 0
    column_jobs: I64  # job id of columns 1..


class Workload:
    """Jobs on the site's GPUs. Deterministic for a given seed."""

    def __init__(self, site: SiteConfig, topo: Topology, rng: np.random.Generator, t0_s: float, utc_offset_s: float):
        self.site = site
        self.topo = topo
        self.rng = rng
        self.cfg = site.workload
        self.utc_offset_s = utc_offset_s
        self.t0_s = t0_s
        self.jobs = JobTable()
        self.gpu_job = np.full(topo.n_gpus, -1, dtype=np.int64)
        self.gpu_cap_factor = np.ones(topo.n_gpus, dtype=np.float64)  # set by the twin from caps
        self.queue: list[int] = []
        self.active: list[int] = []  # jobs holding GPUs, in start order
        self.sched = Scheduler(GpuPool.from_topology(topo), SchedulerConfig())
        self.rejected: dict[int, str] = {}
        self._sched_name: dict[int, str] = {}
        self._sched_seq: dict[int, int] = {}
        self._job_of: dict[str, int] = {}
        self._sched_wakeup_s = np.inf
        self._last_t = t0_s
        self.xid_events: list[XidEvent] = []
        self.gpu_last_xid = np.zeros(topo.n_gpus, dtype=np.int64)
        self._forced_fault: dict[int, tuple[int | None, int | None]] = {}  # job -> (gpu, xid) of an injected fault
        self._fail_rate_per_gpu_s = self.cfg.failure_rate_per_gpu_day / 86_400.0
        self._inference_profile = traces.azure_token_rate_profile(self.cfg.inference.trace)
        self._gpn = np.bincount(topo.gpu_node, minlength=topo.n_nodes)
        self._node_first_gpu = np.concatenate([[0], np.cumsum(self._gpn)[:-1]])
        self.factory = JobFactory(self.cfg, topo.n_gpus, int(self._gpn.max()), rng)
        self._mapping_dirty = False
        self._next_event_s = -np.inf
        self._arrival_rates_per_s = self.factory.arrival_rates()
        self._next_arrival_s = {
            k: (t0_s + rng.exponential(1.0 / r) if r > 0 else np.inf) for k, r in self._arrival_rates_per_s.items()
        }
        self._populate(t0_s)

    def _populate(self, t0: float) -> None:
        """Warm start: the site is already busy when the run begins."""
        cfg = self.cfg
        target = cfg.target_utilization * self.topo.n_gpus
        for _ in range(cfg.pretraining.count):
            self._submit(self.factory.training(cfg.pretraining, Kind.PRETRAIN, Priority.CORE, warm=True), t0, warm=True)
        inf = cfg.inference
        inf_gpus = int(inf.share_of_gpus * self.topo.n_gpus)
        while inf_gpus >= inf.replica_gpus:
            replicas = min(int(self.rng.integers(4, 17)), inf_gpus // inf.replica_gpus)
            spec = self.factory.inference(replicas * inf.replica_gpus)
            self._submit(spec, t0, warm=True)
            inf_gpus -= spec.n_gpus
        for _ in range(cfg.finetune.count):
            if self._busy_gpus() >= target:
                break
            self._submit(
                self.factory.training(cfg.finetune, Kind.FINETUNE, self.factory.finetune_priority(), True), t0, True
            )
        batch_goal = self._busy_gpus() + cfg.batch.share_of_gpus * self.topo.n_gpus
        while self._busy_gpus() < min(batch_goal, target):
            before = self._busy_gpus()
            self._submit(self.factory.batch(warm=True), t0, warm=True)
            if self._busy_gpus() == before:
                break

    def _busy_gpus(self) -> int:
        return int(np.count_nonzero(self.gpu_job >= 0))

    def _submit(self, spec: JobSpec, t: float, warm: bool = False) -> int:
        """Add a job and hand it to the GPU pool scheduler; a request that can never fit is rejected with a reason."""
        j = self.jobs.add(spec, t, self._fail_rate_per_gpu_s)
        if self._hand_to_scheduler(j, t):
            self.queue.append(j)
            self._try_queue(t, warm)
        return j

    def _hand_to_scheduler(self, j: int, t: float) -> bool:
        jobs = self.jobs
        self._sched_seq[j] = self._sched_seq.get(j, 0) + 1
        name = f"{jobs.names[j]}#{self._sched_seq[j]}"
        request = JobRequest(
            name=name,
            gpus=int(jobs.n_gpus[j]),
            priority=PRIORITY_NAMES[Priority(int(jobs.priority[j]))],
            deferrable=bool(jobs.deferrable[j]),
            est_duration_s=float(max(jobs.work_s[j] - jobs.work_done_s[j], 1.0))
            if np.isfinite(jobs.work_s[j])
            else 1e9,
            checkpoint_interval_s=float(jobs.ckpt_interval_s[j]) if np.isfinite(jobs.ckpt_interval_s[j]) else 1e9,
            work_done_s=float(jobs.work_done_s[j]),
            preemptible=jobs.kind[j] != Kind.INFERENCE,
        )
        adm = self.sched.submit(request, t)
        if not adm.accepted:
            jobs.state[j] = State.DONE
            jobs.end_s[j] = t
            self.rejected[j] = adm.reason
            return False
        self._sched_name[j] = name
        self._job_of[name] = j
        return True

    # ----------------------------------------------------------------------------------- placement

    def _start_on(self, j: int, gpus: I64, t: float, warm: bool = False) -> None:
        jobs = self.jobs
        self.gpu_job[gpus] = j
        jobs.gpus[j] = gpus
        self._mapping_dirty = True
        self.active.append(j)
        if np.isnan(jobs.start_s[j]):
            jobs.start_s[j] = t
        rng = self.rng
        if warm:
            jobs.state[j] = State.RUNNING
            jobs.state_start_s[j] = t
            jobs.phase[j] = rng.uniform()
            jobs.next_ckpt_s[j] = t + rng.uniform(0.0, 1.0) * jobs.ckpt_interval_s[j]
        else:
            jobs.state[j] = State.STARTING
            jobs.state_start_s[j] = t
            jobs.state_end_s[j] = t + jobs.startup_s[j]
        rate = jobs.fail_rate_per_s[j]
        jobs.next_fail_s[j] = t + rng.exponential(1.0 / rate) if rate > 0 else np.inf
        self._schedule_straggler(j, t)
        self._update_speed(np.array([j]))
        self._refresh(j, t)

    def _release(self, j: int) -> None:
        gpus = self.jobs.gpus[j]
        self.gpu_job[gpus] = -1
        self._mapping_dirty = True
        self.active.remove(j)
        self.jobs.timer_s[j] = np.inf

    def _preempt(self, j: int, t: float) -> None:
        """The scheduler took job j's GPUs for a higher class: it goes back to the queue from its last checkpoint."""
        jobs = self.jobs
        jobs.lost_work_s[j] += jobs.work_done_s[j] - jobs.last_ckpt_work_s[j]
        jobs.work_done_s[j] = jobs.last_ckpt_work_s[j]
        jobs.preemptions[j] += 1
        self._release(j)
        for name in ("next_ckpt_s", "next_fail_s", "next_straggle_s", "straggle_end_s", "state_end_s"):
            getattr(jobs, name)[j] = np.inf
        jobs.straggle[j] = 0.0
        jobs.state[j] = State.QUEUED
        self.queue.append(j)

    def _try_queue(self, t: float, warm: bool = False) -> None:
        """One scheduling decision: start what fits (by class, fair share and topology), preempt where allowed."""
        if not self.queue:
            return
        result = self.sched.schedule_step(t)
        for name in result.preempted:
            j = self._job_of[name]
            if j in self.active:
                self._preempt(j, t)
        for name in result.started:
            j = self._job_of[name]
            self.queue.remove(j)
            self._start_on(j, np.asarray(self.sched.allocation(name), dtype=np.int64), t, warm)

    def _schedule_straggler(self, j: int, t: float) -> None:
        rate = self.cfg.straggler_rate_per_job_hour / 3600.0
        if self.jobs.kind[j] in (Kind.PRETRAIN, Kind.FINETUNE) and rate > 0:
            self.jobs.next_straggle_s[j] = t + self.rng.exponential(1.0 / rate)
        else:
            self.jobs.next_straggle_s[j] = np.inf

    def _update_speed(self, idx: I64) -> None:
        """Compute-phase speed of jobs from their GPUs' power caps (the slowest GPU sets the pace)."""
        for j in idx:
            gpus = self.jobs.gpus[j]
            self.jobs.speed[j] = float(self.gpu_cap_factor[gpus].min()) if gpus.size else 1.0

    def active_ids(self) -> I64:
        """Jobs holding GPUs now."""
        return np.array(self.active, dtype=np.int64)

    # ----------------------------------------------------------------------------------- operator levers

    def set_cap_factors(self, factor: F64, t: float) -> None:
        self.gpu_cap_factor = factor
        ids = self.active_ids()
        self._update_speed(ids)
        for j in ids:
            self._refresh(int(j), t)
        self._next_event_s = -np.inf

    def pause(self, j: int, t: float, until_s: float = np.inf) -> bool:
        """Suspend a job in place (it keeps its GPUs, as a suspended Slurm job does)."""
        if self.jobs.state[j] not in (State.STARTING, State.RUNNING, State.CHECKPOINT):
            return False
        self.jobs.state[j] = State.PAUSED
        self.jobs.state_start_s[j] = t
        self.jobs.state_end_s[j] = until_s
        self._refresh(j, t)
        self._next_event_s = -np.inf
        return True

    def resume(self, j: int, t: float) -> bool:
        if self.jobs.state[j] != State.PAUSED:
            return False
        self._restart(j, t)
        return True

    def defer(self, j: int, until_s: float) -> bool:
        """Hold a queued job back until ``until_s``: it leaves the scheduler's queue and returns at that time."""
        if self.jobs.state[j] != State.QUEUED or j not in self.queue:
            return False
        name = self._sched_name.pop(j, None)
        if name is not None:
            self.sched.cancel(name, self._last_t)
        self.jobs.defer_until_s[j] = until_s
        self._next_event_s = -np.inf
        return True

    def quiet(self, j: int, t: float) -> None:
        """Hold off job j's checkpoints, faults and stragglers (for experiments on steady iterations)."""
        self.jobs.next_ckpt_s[j] = np.inf
        self.jobs.next_fail_s[j] = np.inf
        self.jobs.next_straggle_s[j] = np.inf
        self._refresh(j, t)
        self._next_event_s = -np.inf

    def trigger(self, j: int, timer: str, t: float) -> None:
        """Make one of job j's timers (``next_ckpt_s``, ``next_fail_s``, ``next_straggle_s``) fire at ``t``."""
        if timer not in ("next_ckpt_s", "next_fail_s", "next_straggle_s"):
            raise ValueError(f"unknown job timer {timer!r}")
        getattr(self.jobs, timer)[j] = t
        self._refresh(j, t)
        self._next_event_s = -np.inf

    def inject_fault(self, j: int, t: float, xid: int | None = None, gpu: int | None = None) -> None:
        """Make job j fault at ``t`` with the given Xid on the given GPU (drawn as usual where not given)."""
        if gpu is not None and gpu not in self.jobs.gpus[j]:
            raise ValueError(f"GPU {gpu} is not one of job {j}'s")
        self._forced_fault[j] = (gpu, xid)
        self.trigger(j, "next_fail_s", t)

    def restart_now(self, j: int, t: float) -> bool:
        """Self-healing: a stalled job restarts from its checkpoint now instead of after its restart delay."""
        if self.jobs.state[j] != State.STALLED:
            return False
        self.jobs.state_end_s[j] = t
        self._refresh(j, t)
        self._next_event_s = -np.inf
        return True

    def drain_node(self, node: int, t: float) -> list[int]:
        """Cordon a node in the scheduler: its jobs go back to the queue from their last checkpoint and are
        placed elsewhere; nothing new lands there until :meth:`undrain_node`. Returns the jobs moved."""
        return self._requeue(self.sched.node_down(node, t), t)

    def undrain_node(self, node: int, t: float) -> None:
        self.sched.node_up(node, t)
        self._requeue([], t)

    def cordon_gpu(self, gpu: int, t: float, move_jobs: bool = True) -> list[int]:
        """Cordon one GPU in the scheduler: nothing new lands there until :meth:`uncordon_gpu`; with
        ``move_jobs`` its jobs go back to the queue from their last checkpoint and are placed elsewhere (the rest
        of the node keeps working). Returns the jobs moved (or still on the GPU without ``move_jobs``)."""
        held = self.sched.cordon_gpu(gpu, t)
        if not move_jobs:
            return [self._job_of[name] for name in held]
        return self._requeue(self.sched.evict_gpu(gpu, t), t)

    def uncordon_gpu(self, gpu: int, t: float) -> None:
        self.sched.uncordon_gpu(gpu, t)
        self._requeue([], t)

    def _requeue(self, evicted: Iterable[str], t: float) -> list[int]:
        """The jobs the scheduler evicted (by name) go back to the queue from their last checkpoint; the queue is
        then placed again (on what a drain or cordon left, or what an undrain or uncordon gave back). Returns the
        jobs moved."""
        moved = [self._job_of[name] for name in evicted]
        for j in moved:
            if j in self.active:
                self._preempt(j, t)
        self._try_queue(t)
        self._next_event_s = -np.inf
        return moved

    def _restart(self, j: int, t: float) -> None:
        jobs = self.jobs
        jobs.state[j] = State.STARTING
        jobs.state_start_s[j] = t
        jobs.state_end_s[j] = t + jobs.startup_s[j]
        self._refresh(j, t)
        self._next_event_s = -np.inf

    # ----------------------------------------------------------------------------------- events

    def _work_rate(self, idx: I64 | int) -> tuple[F64, F64, F64]:
        """(iterations per second, compute share of an iteration, work seconds per second) while RUNNING.

        Under a cap the compute phase stretches by 1/speed; a straggler stretches the whole iteration by
        (1 + slowdown) while the others wait in the collective.
        """
        jobs = self.jobs
        f = jobs.compute_fraction[idx]
        speed = np.maximum(jobs.speed[idx], 1e-3)
        period = jobs.iteration_s[idx] * (f / speed + 1.0 - f) * (1.0 + jobs.straggle[idx])
        f_eff = f * jobs.iteration_s[idx] / speed / period
        return 1.0 / period, f_eff, jobs.iteration_s[idx] / period

    def _refresh(self, j: int, t: float) -> None:
        """Recompute the time of job j's next event from its state and timers."""
        jobs = self.jobs
        st = jobs.state[j]
        if st == _RUNNING:
            _, _, work_rate = self._work_rate(j)
            done_at = t + (jobs.work_s[j] - jobs.work_done_s[j]) / max(float(work_rate), 1e-9)
            timer = min(
                jobs.next_ckpt_s[j],
                jobs.next_fail_s[j],
                jobs.next_straggle_s[j],
                jobs.straggle_end_s[j],
                done_at,
            )
        elif st in (_STARTING, _CHECKPOINT):
            timer = min(jobs.state_end_s[j], jobs.next_fail_s[j], jobs.straggle_end_s[j])
        elif st in (_STALLED, _PAUSED):
            timer = jobs.state_end_s[j]
        else:
            timer = np.inf
        jobs.timer_s[j] = timer

    def _handle(self, j: int, t: float) -> bool:
        """Apply every transition of job j due at t. Returns True when the job released its GPUs."""
        jobs = self.jobs
        due = t + 1e-9
        if jobs.straggle_end_s[j] <= due:
            jobs.straggle[j] = 0.0
            jobs.straggle_end_s[j] = np.inf
            self._schedule_straggler(j, t)
        st = jobs.state[j]
        if st in (_STARTING, _CHECKPOINT) and jobs.state_end_s[j] <= due:
            if st == _CHECKPOINT:
                jobs.checkpoints[j] += 1
            jobs.state[j] = _RUNNING
            jobs.state_start_s[j] = t
            jobs.state_end_s[j] = np.inf
            jobs.next_ckpt_s[j] = t + jobs.ckpt_interval_s[j]
        elif st == _STALLED and jobs.state_end_s[j] <= due:
            self._restart(j, t)
            rate = jobs.fail_rate_per_s[j]
            jobs.next_fail_s[j] = t + self.rng.exponential(1.0 / rate) if rate > 0 else np.inf
        elif st == _PAUSED and jobs.state_end_s[j] <= due:
            self._restart(j, t)
        st = jobs.state[j]
        if st == _RUNNING and jobs.work_done_s[j] >= jobs.work_s[j] * (1.0 - 1e-9) - 1e-6:
            jobs.state[j] = _DONE
            jobs.end_s[j] = t
            self._release(j)
            self.sched.finish(self._sched_name[j], t)
            return True
        if st == _RUNNING and jobs.next_ckpt_s[j] <= due:
            # The checkpoint saves the work done so far.
            jobs.state[j] = _CHECKPOINT
            jobs.state_start_s[j] = t
            jobs.state_end_s[j] = t + jobs.ckpt_duration_s[j]
            jobs.last_ckpt_work_s[j] = jobs.work_done_s[j]
            jobs.next_ckpt_s[j] = np.inf
            self.sched.record_checkpoint(self._sched_name[j], t)
        st = jobs.state[j]
        if st in (_STARTING, _RUNNING, _CHECKPOINT) and jobs.next_fail_s[j] <= due:
            # A fault stalls the whole job; it restarts from its last checkpoint after a delay.
            jobs.lost_work_s[j] += jobs.work_done_s[j] - jobs.last_ckpt_work_s[j]
            jobs.work_done_s[j] = jobs.last_ckpt_work_s[j]
            jobs.failures[j] += 1
            jobs.state[j] = _STALLED
            jobs.state_start_s[j] = t
            jobs.state_end_s[j] = t + self.rng.uniform(*self.cfg.restart_delay_s)
            jobs.next_fail_s[j] = np.inf
            jobs.straggle[j] = 0.0
            jobs.straggle_end_s[j] = np.inf
            gpu = int(self.rng.choice(jobs.gpus[j]))
            xid = int(self.rng.choice(XID_CODES, p=XID_WEIGHTS / XID_WEIGHTS.sum()))
            forced_gpu, forced_xid = self._forced_fault.pop(j, (None, None))
            gpu, xid = gpu if forced_gpu is None else forced_gpu, xid if forced_xid is None else forced_xid
            self.gpu_last_xid[gpu] = xid
            self.xid_events.append(XidEvent(t, int(j), gpu, xid))
        if jobs.state[j] == _RUNNING and jobs.next_straggle_s[j] <= due:
            jobs.straggle[j] = self.rng.uniform(*self.cfg.straggler_slowdown)
            jobs.straggle_end_s[j] = t + self.rng.uniform(*self.cfg.straggler_duration_s)
            jobs.next_straggle_s[j] = np.inf
        self._refresh(j, t)
        return False

    def _process_events(self, t: float) -> None:
        self._last_t = t
        jobs = self.jobs
        released = False
        ids = self.active_ids()
        if ids.size:
            for j in ids[jobs.timer_s[ids] <= t + 1e-9]:
                released |= self._handle(int(j), t)
        arrived = False
        for kind, next_s in list(self._next_arrival_s.items()):
            while next_s <= t + 1e-9:
                if kind == _BATCH:
                    spec = self.factory.batch(warm=False)
                elif kind == _FINETUNE:
                    spec = self.factory.training(
                        self.cfg.finetune, Kind.FINETUNE, self.factory.finetune_priority(), False
                    )
                else:
                    spec = self.factory.training(self.cfg.pretraining, Kind.PRETRAIN, Priority.CORE, False)
                j = self.jobs.add(spec, next_s, self._fail_rate_per_gpu_s)
                if self._hand_to_scheduler(j, next_s):
                    self.queue.append(j)
                arrived = True
                next_s += self.rng.exponential(1.0 / self._arrival_rates_per_s[kind])
            self._next_arrival_s[kind] = next_s
        # Deferred jobs whose hold has ended go back to the scheduler.
        due = [q for q in self.queue if q not in self._sched_name and jobs.defer_until_s[q] <= t + 1e-9]
        for q in due:
            if not self._hand_to_scheduler(q, t):
                self.queue.remove(q)
        if released or arrived or due or t + 1e-9 >= self._sched_wakeup_s:
            self._try_queue(t)
        ids = self.active_ids()
        candidates = [float(jobs.timer_s[ids].min()) if ids.size else np.inf, *self._next_arrival_s.values()]
        candidates += [float(jobs.defer_until_s[q]) for q in self.queue if q not in self._sched_name]
        self._sched_wakeup_s = self.sched.next_wakeup_s(t) if self.queue else np.inf
        if self._sched_wakeup_s > t:
            candidates.append(self._sched_wakeup_s)
        self._next_event_s = min(candidates)

    # ----------------------------------------------------------------------------------- activity

    def inference_load(self, t_s: F64) -> F64:
        """Load of the inference services at times ``t_s`` [share of daily peak]: the Azure trace's per-second
        token rate (tiled hourly) on a diurnal cycle."""
        inf = self.cfg.inference
        hour = ((t_s + self.utc_offset_s) / 3600.0) % 24.0
        daily = traces.diurnal_shape(hour, inf.peak_hour_local, inf.trough_fraction)
        prof = self._inference_profile
        short = prof[((t_s - self.t0_s).astype(np.int64)) % prof.size]
        return np.asarray(daily * short)

    def _segment_activity(self, ids: I64, t: float, steps: int, dt: float) -> NDArray[np.float32]:
        """Activity [steps, len(ids)] of the given jobs over a segment in which none changes state."""
        jobs = self.jobs
        st = jobs.state[ids]
        kind = jobs.kind[ids]
        act = np.zeros((steps, ids.size), dtype=np.float32)
        t_k = t + dt * np.arange(steps, dtype=np.float64)
        running = st == _RUNNING
        sel = np.flatnonzero(running & ((kind == _PRETRAIN) | (kind == _FINETUNE)))
        if sel.size:
            j = ids[sel]
            rate, f_eff, _ = self._work_rate(j)
            edges = jobs.phase[j] + np.outer(dt * np.arange(steps + 1, dtype=np.float64), rate)
            share = compute_share(edges[:-1], edges[1:], f_eff)
            coll = jobs.act_collective[j]
            act[:, sel] = coll + (jobs.act_compute[j] - coll) * share
        sel = np.flatnonzero(running & (kind == _INFERENCE))
        if sel.size:
            load = self.inference_load(t_k)
            act[:, sel] = np.clip(0.1 + 0.8 * np.outer(load, jobs.level[ids[sel]]), 0.0, 1.0)
        sel = np.flatnonzero(running & (kind == _BATCH))
        if sel.size:
            act[:, sel] = jobs.level[ids[sel]]
        sel = np.flatnonzero(st == _STARTING)
        if sel.size:
            j = ids[sel]
            ramp = np.clip((t_k[:, None] - jobs.state_start_s[j]) / np.maximum(jobs.startup_s[j], 1e-9), 0.0, 1.0)
            act[:, sel] = ACT_STARTUP[0] + (ACT_STARTUP[1] - ACT_STARTUP[0]) * ramp
        sel = np.flatnonzero(st == _CHECKPOINT)
        if sel.size:
            act[:, sel] = ACT_CHECKPOINT
        return act

    def _advance_state(self, ids: I64, duration_s: float) -> None:
        if ids.size == 0:
            return
        jobs = self.jobs
        running = jobs.state[ids] == _RUNNING
        j = ids[running]
        if j.size:
            rate, _, work_rate = self._work_rate(j)
            jobs.phase[j] = (jobs.phase[j] + rate * duration_s) % 1.0
            jobs.work_done_s[j] += work_rate * duration_s
            jobs.throughput_lost_gpu_s[j] += (1.0 - work_rate) * duration_s * jobs.n_gpus[j]
            capped = j[jobs.speed[j] < 1.0]
            if capped.size:  # the share of the loss due to power caps: work rate at full speed minus now
                f = jobs.compute_fraction[capped]
                full = 1.0 / ((f + 1.0 - f) * (1.0 + jobs.straggle[capped]))
                _, _, now = self._work_rate(capped)
                jobs.cap_lost_gpu_s[capped] += (full - now) * duration_s * jobs.n_gpus[capped]
        held = ids[~running]
        jobs.throughput_lost_gpu_s[held] += duration_s * jobs.n_gpus[held]
        paused = held[jobs.state[held] == _PAUSED]
        jobs.pause_lost_gpu_s[paused] += duration_s * jobs.n_gpus[paused]
        jobs.gpu_seconds[ids] += duration_s * jobs.n_gpus[ids]

    def advance(self, t0: float, n_steps: int, dt: float) -> BlockActivity:
        """Advance the workload over ``n_steps`` steps of ``dt`` from ``t0``; return the activity block."""
        segments: list[tuple[int, I64, NDArray[np.float32]]] = []
        changes: list[tuple[int, I64]] = []
        k = 0
        while k < n_steps:
            t = t0 + k * dt
            if t + 1e-9 >= self._next_event_s:
                self._process_events(t)
            if self._mapping_dirty or k == 0:
                changes.append((k, self.gpu_job.copy()))
                self._mapping_dirty = False
            steps = int(min(n_steps - k, max(1, np.ceil((self._next_event_s - t) / dt - 1e-9))))
            ids = self.active_ids()
            segments.append((k, ids, self._segment_activity(ids, t, steps, dt)))
            self._advance_state(ids, steps * dt)
            k += steps
        columns = np.unique(np.concatenate([ids for _, ids, _ in segments]))
        pos = np.zeros(self.jobs.n + 1, dtype=np.int64)  # pos[job + 1] = column; pos[0] = 0 for "no job"
        pos[columns + 1] = np.arange(1, columns.size + 1)
        activity = np.zeros((n_steps, columns.size + 1), dtype=np.float32)
        for k0, ids, act in segments:
            activity[k0 : k0 + act.shape[0], pos[ids + 1]] = act
        mapping = [(k, pos[gj + 1]) for k, gj in changes]
        return BlockActivity(activity, mapping, columns)
