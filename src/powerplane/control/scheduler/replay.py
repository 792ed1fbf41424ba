"""Replay of the Alibaba openb GPU trace: a discrete-event simulation over the trace's own times.

Trace (Weng et al., "Beware of Fragmentation", USENIX ATC 2023; alibaba/clusterdata cluster-trace-gpu-v2023,
CC BY 4.0): every pod with ``num_gpu >= 1`` becomes a job that arrives at its ``creation_time`` and runs for its
real lifetime: ``deletion_time - scheduled_time``, or ``deletion_time - creation_time`` for pods the real cluster
never scheduled (at least 1 s). Pods without GPUs (CPU only) are left out and counted. A single-GPU pod with
``gpu_milli < 1000`` asks for that share HAMi-style (``compute_pct = gpu_milli / 10``, memory in proportion);
``gpu_spec`` is empty in openb, so any GPU model serves. Node CPU and host memory are not modelled (a GPU pool).

QoS classes to priority classes (:data:`QOS_CLASSES`): Guaranteed and LS (latency-sensitive services) -> core,
Burstable -> normal, BE (best effort) -> low. Low and normal jobs checkpoint every ``checkpoint_interval_s`` of
running and may be preempted; core jobs are never preempted.

Load. At its real times on its own node list (1,213 nodes, 6,212 GPUs) the trace keeps the pool almost idle
(about 1 % of GPU capacity over its busy last 35 days; nearly every pod is created in those days), so any scheduler
starts every pod at once and all look the same. Yet all its pods together ask for ~98 % of that pool: the trace
was published for "inflation" studies that fill the cluster. To replay it under contention, where a scheduler's
choices matter, two documented knobs raise the offered load while keeping the real arrival order, burstiness,
request shapes, QoS and lifetimes:

- ``pool_scale`` (default 0.1): the pool keeps that share of the nodes of every (model, GPUs per node) group of the
  node list, so it stays shaped like it (0.1: 124 nodes, 628 GPUs);
- ``speedup`` (default 300): arrival gaps are divided by it; lifetimes are kept.

The replay starts at the ``start_quantile`` (default 1 %) of creation times, the start of the busy period (day
~115); the few long-running pods created before it arrive at that moment. The report gives the offered load
(:func:`offered_load`). With ``speedup=1, pool_scale=1, start_quantile=0`` the replay is the trace as recorded.

Metrics, over the window from the first to the last arrival (the jobs still running then are simulated to the
end for the completion counts):

- allocation rate: allocated GPU-milli / total GPU-milli, time-weighted (exact, from every change), per bin and
  averaged;
- fragmentation: :func:`~powerplane.control.scheduler.policy.fragmentation_milli` with the trace's own shapes and
  their popularity as the target workload, sampled at ``frag_samples`` evenly spaced times, as a share of the
  pool's capacity and of its free capacity;
- queueing delay per class: first start - arrival (mean, p50, p95, max); preemptions and the work they lost;
  jobs completed and rejected (with reasons).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from powerplane.control.scheduler.policy import fragmentation_milli
from powerplane.control.scheduler.pool import GpuPool
from powerplane.control.scheduler.request import MILLI_PER_GPU, JobRequest, Shape
from powerplane.control.scheduler.scheduler import Scheduler, SchedulerConfig

F64 = NDArray[np.float64]

QOS_CLASSES: dict[str, str] = {"Guaranteed": "core", "LS": "core", "Burstable": "normal", "BE": "low"}
DEFAULT_SPEEDUP = 300.0
DEFAULT_POOL_SCALE = 0.1
DEFAULT_START_QUANTILE = 0.01
NODE_LIST_NAME = "alibaba_openb_node_list_gpu_node.csv"

_FINISH, _ARRIVAL, _REBALANCE, _SAMPLE = 0, 1, 2, 3


@dataclass(frozen=True)
class Trace:
    """GPU pods of a trace as columns: name, arrival [s], runtime [s], GPUs, milli per GPU, QoS."""

    names: list[str]
    arrival_s: F64
    runtime_s: F64
    num_gpu: NDArray[np.int64]
    gpu_milli: NDArray[np.int64]
    qos: list[str]
    n_cpu_only: int

    def __len__(self) -> int:
        return len(self.names)

    def shapes(self) -> tuple[list[Shape], F64]:
        """Distinct request shapes and their popularity (the target workload of the fragmentation measure)."""
        pairs = Counter(zip(self.num_gpu.tolist(), self.gpu_milli.tolist(), strict=True))
        shapes = [Shape(g, m, 0, None) for g, m in pairs]
        pop = np.array(list(pairs.values()), dtype=np.float64)
        return shapes, pop / pop.sum()


def load_openb(path: str | Path, speedup: float = 1.0, start_quantile: float = 0.0) -> Trace:
    """Read an openb pod list (see the module docstring); ``speedup`` compresses the arrival gaps from the
    ``start_quantile`` quantile of arrival times on; pods created before it arrive at that time."""
    df = pd.read_csv(path)
    missing = {"name", "num_gpu", "gpu_milli", "qos", "creation_time", "deletion_time", "scheduled_time"} - set(df)
    if missing:
        raise ValueError(f"{path}: not an openb pod list, missing columns {sorted(missing)}")
    if not speedup > 0:
        raise ValueError(f"speedup must be positive, got {speedup}")
    gpu = df[df["num_gpu"] >= 1].sort_values(["creation_time", "name"], kind="stable")
    created = gpu["creation_time"].to_numpy(dtype=np.float64)
    started = gpu["scheduled_time"].to_numpy(dtype=np.float64)
    start = np.where(np.isnan(started), created, started)
    runtime = np.maximum(gpu["deletion_time"].to_numpy(dtype=np.float64) - start, 1.0)
    t0 = float(np.quantile(created, start_quantile)) if created.size else 0.0
    created = np.maximum(created, t0)
    milli = np.where(gpu["num_gpu"] > 1, MILLI_PER_GPU, gpu["gpu_milli"]).astype(np.int64)
    return Trace(
        names=gpu["name"].astype(str).tolist(),
        arrival_s=t0 + (created - t0) / speedup,
        runtime_s=runtime,
        num_gpu=gpu["num_gpu"].to_numpy(dtype=np.int64),
        gpu_milli=np.clip(milli, 1, MILLI_PER_GPU),
        qos=gpu["qos"].astype(str).tolist(),
        n_cpu_only=int((df["num_gpu"] < 1).sum()),
    )


def offered_load(trace: Trace, total_milli: int) -> float:
    """GPU-milli the trace would hold over its arrival window if every pod started on arrival, as a share of
    the pool's capacity over that window (above 1: the pool cannot hold the demand)."""
    t0, t1 = float(trace.arrival_s.min()), float(trace.arrival_s.max())
    if t1 <= t0:
        return 0.0
    held = np.clip(np.minimum(trace.arrival_s + trace.runtime_s, t1) - trace.arrival_s, 0.0, None)
    return float((trace.num_gpu * trace.gpu_milli * held).sum() / (total_milli * (t1 - t0)))


def requests(
    trace: Trace, qos_classes: Mapping[str, str] = QOS_CLASSES, checkpoint_interval_s: float = 1800.0
) -> list[JobRequest]:
    """One request per pod (QoS values the map lacks go to ``normal``)."""
    out = []
    for i, name in enumerate(trace.names):
        g, m = int(trace.num_gpu[i]), int(trace.gpu_milli[i])
        frac = g == 1 and m < MILLI_PER_GPU
        out.append(
            JobRequest(
                name=name,
                gpus=g,
                compute_pct=max(1, m // 10) if frac else None,
                priority=qos_classes.get(trace.qos[i], "normal"),
                tenant="openb",
                est_duration_s=float(trace.runtime_s[i]),
                checkpoint_interval_s=checkpoint_interval_s,
            )
        )
    return out


def simulate(
    trace: Trace,
    reqs: list[JobRequest],
    pool: GpuPool,
    config: SchedulerConfig,
    bin_s: float = 3600.0,
    frag_samples: int = 240,
    rebalance: bool = True,
) -> dict[str, Any]:
    """Run one scheduler over the trace; returns its metrics (see the module docstring)."""
    wall0 = time.perf_counter()
    sched = Scheduler(pool, config)
    n = len(trace)
    t_first = float(trace.arrival_s.min())
    t_last = float(trace.arrival_s.max())
    index = {r.name: i for i, r in enumerate(reqs)}
    events: list[tuple[float, int, int, int]] = [(float(trace.arrival_s[i]), _ARRIVAL, i, 0) for i in range(n)]
    samples = np.linspace(t_first, t_last, frag_samples) if frag_samples > 0 else np.zeros(0)
    events += [(float(t), _SAMPLE, k, 0) for k, t in enumerate(samples)]
    if rebalance and config.order == "priority":
        ticks = np.arange(t_first + config.rebalance_interval_s, t_last, config.rebalance_interval_s)
        events += [(float(t), _REBALANCE, k, 0) for k, t in enumerate(ticks)]
    heapq.heapify(events)
    gen = np.zeros(n, dtype=np.int64)
    change_t: list[float] = [t_first]
    change_alloc: list[int] = [0]
    shapes, popularity = trace.shapes()
    frag = np.zeros(samples.size)
    frag_free = np.zeros(samples.size)
    completed = 0
    while events:
        t = events[0][0]
        touched = False
        rebal = False
        while events and events[0][0] == t:
            _, kind, i, g = heapq.heappop(events)
            if kind == _FINISH:
                if g == gen[i]:
                    sched.finish(reqs[i].name, t)
                    completed += 1
                    touched = True
            elif kind == _ARRIVAL:
                touched |= sched.submit(reqs[i], t).accepted
            elif kind == _REBALANCE:
                rebal = True
            else:
                fm = fragmentation_milli(pool, shapes, popularity)
                frag[i] = fm / pool.total_milli
                free = float(pool.free_milli.sum())
                frag_free[i] = fm / free if free > 0 else 0.0
        if rebal:
            step = sched.rebalance(t)
        elif touched:
            step = sched.schedule_step(t)
        else:
            continue
        for name in step.preempted:
            gen[index[name]] += 1
        for name in step.started:
            i = index[name]
            job = sched.job(name)
            heapq.heappush(events, (t + float(trace.runtime_s[i]) - job.work_done_s, _FINISH, i, int(gen[i])))
        if pool.allocated_milli != change_alloc[-1]:
            change_t.append(t)
            change_alloc.append(pool.allocated_milli)
    wall_s = time.perf_counter() - wall0
    series = _binned_rate(
        np.array(change_t), np.array(change_alloc, dtype=np.float64), pool.total_milli, t_first, t_last, bin_s
    )
    delays: dict[str, list[float]] = {c.name: [] for c in sched.classes}
    for job in sched.jobs:
        if not math.isnan(job.first_start_s):
            delays[sched.classes[job.cls].name].append(job.first_start_s - job.submit_s)
    reasons = Counter(a.reason for a in sched.rejected)
    return {
        "order": config.order,
        "policy": config.policy,
        "preemption": config.preemption,
        "alloc_rate_avg": series["avg"],
        "alloc_rate_series": series["series"],
        "alloc_rate_max": float(max(series["series"])) if series["series"] else 0.0,
        "fragmentation_avg": float(frag.mean()) if frag.size else 0.0,
        "fragmentation_of_free_avg": float(frag_free.mean()) if frag_free.size else 0.0,
        "queue_delay_s": {c: _stats(v) for c, v in delays.items()},
        "preemptions": sched.n_preemptions,
        "lost_work_gpu_h": sched.lost_work_gpu_s / 3600.0,
        "completed": completed,
        "rejected": len(sched.rejected),
        "rejected_reasons": dict(reasons),
        "makespan_s": float(max(j.end_s for j in sched.jobs if not math.isnan(j.end_s)) - t_first)
        if completed
        else 0.0,
        "wall_s": wall_s,
    }


def _binned_rate(change_t: F64, alloc: F64, total_milli: int, t0: float, t1: float, bin_s: float) -> dict[str, Any]:
    """Time-weighted allocation rate per bin over [t0, t1] from a piecewise-constant step series."""
    if t1 <= t0:
        return {"avg": float(alloc[-1] / total_milli), "series": [float(alloc[-1] / total_milli)]}
    edges = np.append(np.arange(t0, t1, bin_s), t1)
    # Integral of the step function up to each change point, then interpolated at the bin edges.
    seg = np.diff(np.append(change_t, max(t1, change_t[-1])))
    cum = np.concatenate([[0.0], np.cumsum(alloc * seg)])
    knots = np.append(change_t, max(t1, change_t[-1]))

    def integral(x: F64) -> F64:
        k = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, alloc.size - 1)
        return np.asarray(cum[k] + alloc[k] * (x - knots[k]))

    area = integral(edges)
    widths = np.diff(edges)
    rate = np.diff(area) / widths / total_milli
    avg = float((area[-1] - area[0]) / (t1 - t0) / total_milli)
    return {"avg": avg, "series": [round(float(r), 5) for r in rate]}


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "max": float(v.max()),
    }


def replay(
    trace_path: str | Path,
    node_list: str | Path | None = None,
    policy: str = "binpack",
    speedup: float = DEFAULT_SPEEDUP,
    bin_s: float = 600.0,
    qos_classes: Mapping[str, str] = QOS_CLASSES,
    checkpoint_interval_s: float = 1800.0,
    baseline: bool = True,
    frag_samples: int = 240,
    nodes_per_rack: int = 4,
    pool_scale: float = DEFAULT_POOL_SCALE,
    start_quantile: float = DEFAULT_START_QUANTILE,
) -> dict[str, Any]:
    """Replay a trace with our scheduler (``policy`` placement, priority order, preemption) and, in the same run,
    the FIFO first-fit baseline, on pools built from the node list (default: the one beside the trace, else the
    packaged copy). Returns a JSON-ready report."""
    wall0 = time.perf_counter()
    trace_path = Path(trace_path)
    nodes_path = Path(node_list) if node_list is not None else _default_node_list(trace_path)
    trace = load_openb(trace_path, speedup, start_quantile)
    reqs = requests(trace, qos_classes, checkpoint_interval_s)
    template = GpuPool.from_node_list(nodes_path, nodes_per_rack=nodes_per_rack, scale=pool_scale)
    ours_cfg = SchedulerConfig(policy=policy)  # type: ignore[arg-type]
    runs = {"ours": simulate(trace, reqs, _fresh(template), ours_cfg, bin_s, frag_samples)}
    if baseline:
        runs["fifo_first_fit"] = simulate(
            trace, reqs, _fresh(template), SchedulerConfig.fifo_first_fit(), bin_s, frag_samples
        )
    models = Counter(template.models[i] for i in template.gpu_model_idx.tolist())
    report: dict[str, Any] = {
        "trace": str(trace_path),
        "node_list": str(nodes_path),
        "gpu_pods": len(trace),
        "cpu_only_pods_skipped": trace.n_cpu_only,
        "pool": {"nodes": template.n_nodes, "gpus": template.n_gpus, "gpus_by_model": dict(models)},
        "speedup": speedup,
        "pool_scale": pool_scale,
        "start_quantile": start_quantile,
        "offered_load": offered_load(trace, template.total_milli),
        "window_s": [float(trace.arrival_s.min()), float(trace.arrival_s.max())],
        "bin_s": bin_s,
        "bin_trace_h": bin_s * speedup / 3600.0,
        "qos_classes": dict(qos_classes),
        "checkpoint_interval_s": checkpoint_interval_s,
        "runs": runs,
        "run_descriptions": {
            "ours": f"priority classes (QoS map), weighted fair share, backfill, {policy} placement, preemption of "
            "lower classes from checkpoints, rebalance every "
            f"{ours_cfg.rebalance_interval_s / 60:g} min",
            "fifo_first_fit": "strict FIFO by arrival (the head blocks the queue), first-fit placement "
            "(lowest-index GPUs and nodes that fit), no preemption; same pool and trace",
        },
    }
    if baseline:
        ours, base = runs["ours"], runs["fifo_first_fit"]
        report["comparison"] = {
            "alloc_rate_points": 100.0 * (ours["alloc_rate_avg"] - base["alloc_rate_avg"]),
            "fragmentation_points": 100.0 * (ours["fragmentation_avg"] - base["fragmentation_avg"]),
            "queue_delay_mean_s": {
                c: {"ours": ours["queue_delay_s"][c]["mean"], "fifo_first_fit": base["queue_delay_s"][c]["mean"]}
                for c in ours["queue_delay_s"]
            },
        }
    report["wall_s"] = time.perf_counter() - wall0
    return report


def _fresh(template: GpuPool) -> GpuPool:
    return GpuPool(
        node_names=template.node_names,
        models=template.models,
        vendors=template.vendors,
        gpu_node=template.gpu_node,
        node_rack=template.node_rack,
        node_first_gpu=template.node_first_gpu,
        node_n_gpus=template.node_n_gpus,
        gpu_model_idx=template.gpu_model_idx,
        mem_mib_capacity=template.mem_mib_capacity,
        draw_w=template.draw_w,
    )


def _default_node_list(trace_path: Path) -> Path:
    beside = trace_path.parent / NODE_LIST_NAME
    if beside.is_file():
        return beside
    return Path(str(resources.files("powerplane").joinpath("data", NODE_LIST_NAME)))
