"""Invariants of the scheduler under random operations (hypothesis): no GPU over-allocated, milli in 0..1000,
capacity and accounting consistent, preempted jobs never lose more than the work since their checkpoint."""

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powerplane.control.scheduler import GpuPool, JobRequest, Scheduler, SchedulerConfig
from powerplane.control.scheduler.job import CANCELLED, DONE, QUEUED, RUNNING
from powerplane.control.scheduler.request import MILLI_PER_GPU

SHAPES: list[dict[str, Any]] = [
    {"fraction": 0.125},
    {"fraction": 0.25},
    {"fraction": 0.5},
    {"gpus": 1},
    {"gpus": 2},
    {"gpus": 4},
    {"gpus": 6},
    {"gpus": 9},
    {"compute_pct": 30},
    {"compute_pct": 20, "mem_mib": 30_000},
    {"gpus": 2, "fraction": 0.5},
]
CLASSES = ["core", "normal", "low"]
TENANTS = ["a", "b", "c"]

# Weighted: mostly submissions and passes, so that pools fill and preemption, shrinking and requeues happen.
KINDS = ["submit"] * 6 + ["step"] * 4 + ["finish"] * 2 + ["preempt", "cancel", "down", "up", "usage", "rebalance"]
KINDS += ["budget", "checkpoint", "cordon", "uncordon", "evict"]
op = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 10_000),
    st.sampled_from(CLASSES),
    st.sampled_from(TENANTS),
    st.sampled_from([50.0, 300.0, math.inf]),
    st.booleans(),
    st.sampled_from([0.0, 0.02, 0.5, 1.0]),
)


def check(s: Scheduler) -> None:
    pool = s.pool
    fm, fmem = pool.free_milli, pool.free_mem_mib
    assert np.all((fm >= 0) & (fm <= MILLI_PER_GPU))
    assert np.all((fmem >= 0) & (fmem <= pool.mem_mib_capacity))
    used = np.zeros(pool.n_gpus, dtype=np.int64)
    used_mem = np.zeros(pool.n_gpus, dtype=np.int64)
    pre = np.zeros_like(s.pre_milli)
    for job in s.running.values():
        g = job.gpus
        assert job.state == RUNNING and g.size == job.shape.gpus and np.unique(g).size == g.size
        assert np.all(pool.node_up[pool.gpu_node[g]])
        assert 0 < job.milli <= MILLI_PER_GPU
        used[g] += job.milli
        used_mem[g] += job.mem_mib
        if job.preemptible:
            pre[job.cls, g] += job.milli
    node_up = pool.node_up[pool.gpu_node]
    up = node_up & ~pool.gpu_cordoned  # where capacity shows
    assert pool.n_cordoned == int(pool.gpu_cordoned.sum())
    assert np.all(used <= MILLI_PER_GPU)  # no GPU over-allocated
    assert np.array_equal(fm[up], MILLI_PER_GPU - used[up])
    assert np.array_equal(fmem[up], pool.mem_mib_capacity[up] - used_mem[up])
    assert np.all(fm[~up] == 0) and np.all(fmem[~up] == 0) and np.all(used[~node_up] == 0)
    assert pool.allocated_milli == int(used.sum())
    whole = np.bincount(pool.gpu_node, weights=fm == MILLI_PER_GPU, minlength=pool.n_nodes)
    assert np.array_equal(pool.node_whole_free, whole.astype(np.int64))
    assert np.array_equal(s.pre_milli, pre)
    for c, pot in s.pot_milli.items():
        lower = [k for k, pc in enumerate(s.classes) if pc.weight < s.classes[c].weight]
        assert np.array_equal(pot, np.where(up, fm + pre[lower].sum(axis=0), 0))
        assert np.array_equal(s.pot_mem_mib[c][~up], np.zeros(int((~up).sum()), dtype=np.int64))
    states = [j.state for j in s.jobs]
    assert states.count(QUEUED) == s.n_queued
    assert states.count(RUNNING) == len(s.running)
    assert all(st_ in (QUEUED, RUNNING, DONE, CANCELLED) for st_ in states)
    assert math.isclose(s.committed_w, sum(j.power_w for j in s.running.values()), abs_tol=1e-6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=5),
    order=st.sampled_from(["priority", "fifo"]),
    policy=st.sampled_from(["binpack", "spread", "firstfit"]),
    ops=st.lists(op, min_size=10, max_size=80),
)
def test_invariants_under_random_operations(nodes: list[int], order: str, policy: str, ops: list[tuple]) -> None:
    models = ["H100" if i % 2 == 0 else "MI300X" for i in range(len(nodes))]
    cfg = SchedulerConfig(order=order, policy=policy, idle_grace_s=0.0, starve_after_s=0.0)  # type: ignore[arg-type]
    s = Scheduler(GpuPool.build(nodes, models, nodes_per_rack=2), cfg)
    t = 0.0
    work_seen: dict[str, float] = {}
    cordoned: dict[int, set[tuple[int, float]]] = {}
    for o in ops:
        t += 37.0
        kind = o[0]
        running = sorted(s.running.values(), key=lambda j: j.id)
        _, k, prio, tenant, ckpt, deferrable, share = o
        if kind == "submit":
            s.submit(
                JobRequest(
                    f"j{len(s.jobs) + len(s.rejected)}",
                    priority=prio,
                    tenant=tenant,
                    checkpoint_interval_s=ckpt,
                    deferrable=deferrable,
                    deadline_s=t + 500.0,
                    est_duration_s=200.0,
                    **SHAPES[k % len(SHAPES)],
                ),
                t,
            )
        elif kind in ("finish", "preempt", "checkpoint", "usage") and running:
            job = running[k % len(running)]
            name = job.request.name
            if kind == "finish":
                s.finish(name, t)
            elif kind == "checkpoint":
                s.record_checkpoint(name, t)
            elif kind == "usage":
                s.report_usage(name, share, t)
            else:
                before = job.progress_s(t)
                saved = job.checkpoint_s(t)
                lost = s.preempt(name, t)
                interval = job.request.checkpoint_interval_s
                assert 0.0 <= lost <= before - job.ckpt_work_s + 1e-9
                assert lost == before - saved
                if math.isfinite(interval):
                    assert lost < interval + 1e-9  # never more than the work since the last checkpoint
        elif kind == "cancel" and s.jobs:
            s.cancel(s.jobs[k % len(s.jobs)].request.name, t)
        elif kind == "step":
            s.schedule_step(t)
        elif kind == "rebalance":
            s.rebalance(t)
        elif kind == "down":
            s.node_down(k % s.pool.n_nodes, t)
        elif kind == "up":
            s.node_up(k % s.pool.n_nodes, t)
        elif kind == "budget":
            s.set_power_budget([math.inf, 3000.0, 800.0][k % 3])
        elif kind == "cordon":
            g = k % s.pool.n_gpus
            fresh = {(j.id, j.run_start_s) for j in s.running.values()}
            s.cordon_gpu(g, t)
            cordoned[g] = fresh  # jobs running when it was cordoned may stay; no other job may land there
        elif kind == "uncordon":
            g = k % s.pool.n_gpus
            assert s.uncordon_gpu(g, t) == (g in cordoned)
            cordoned.pop(g, None)
        elif kind == "evict":
            g = k % s.pool.n_gpus
            moved = s.evict_gpu(g, t)
            assert all(s.job(n).state == QUEUED for n in moved)
            assert not any(np.any(j.gpus == g) for j in s.running.values())
        for g, allowed in cordoned.items():
            assert s.pool.gpu_cordoned[g]
            assert all((j.id, j.run_start_s) in allowed for j in s.running.values() if np.any(j.gpus == g))
        check(s)
        for job in s.jobs:  # saved progress never goes backwards
            name = job.request.name
            assert job.work_done_s >= work_seen.get(name, 0.0) - 1e-9
            work_seen[name] = job.work_done_s


@settings(max_examples=40, deadline=None)
@given(
    nodes=st.lists(st.sampled_from([2, 4, 8]), min_size=1, max_size=6),
    shapes=st.lists(st.sampled_from(range(len(SHAPES))), min_size=1, max_size=40),
)
def test_priority_scheduler_never_leaves_a_fitting_job_waiting(nodes: list[int], shapes: list[int]) -> None:
    """After a pass, every queued job's shape really does not fit (no stale cache hides room)."""
    from powerplane.control.scheduler.policy import place

    s = Scheduler(GpuPool.build(nodes, ["H100"] * len(nodes)), SchedulerConfig(preemption=False))
    for i, k in enumerate(shapes):
        s.submit(JobRequest(f"j{i}", **SHAPES[k]), float(i))
        if i % 3 == 0:
            s.schedule_step(float(i))
        if i % 5 == 4 and s.running:
            s.finish(next(iter(s.running.values())).request.name, float(i))
    s.schedule_step(100.0)
    for job in s.queued_jobs():
        assert place(s.pool, job.shape) is None
    check(s)


def test_invariants_soak() -> None:
    """A long seeded random run on a busy pool: many preemptions, resizes, node failures and rebalances."""
    rng = np.random.default_rng(7)
    cfg = SchedulerConfig(idle_grace_s=0.0, starve_after_s=0.0)
    s = Scheduler(GpuPool.build([8, 8, 4, 2, 8], ["H100", "H100", "MI300X", "H100", "B200"], nodes_per_rack=2), cfg)
    t = 0.0
    counts = {"preempted": 0, "resized": 0, "down": 0}
    for i in range(1500):
        t += float(rng.uniform(1.0, 60.0))
        u = rng.uniform()
        running = sorted(s.running.values(), key=lambda j: j.id)
        if u < 0.45:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            s.submit(
                JobRequest(
                    f"j{i}",
                    priority=CLASSES[int(rng.integers(3))],
                    tenant=TENANTS[int(rng.integers(3))],
                    checkpoint_interval_s=float(rng.choice([30.0, 120.0, math.inf])),
                    **shape,
                ),
                t,
            )
        elif u < 0.6 and running:
            s.finish(running[int(rng.integers(len(running)))].request.name, t)
        elif u < 0.7 and running:
            job = running[int(rng.integers(len(running)))]
            s.report_usage(job.request.name, float(rng.choice([0.0, 0.5, 1.0])), t)
        elif u < 0.72:
            s.node_down(int(rng.integers(s.pool.n_nodes)), t)
            counts["down"] += 1
        elif u < 0.76:
            s.node_up(int(rng.integers(s.pool.n_nodes)), t)
        elif u < 0.8:
            before = {j.id: j.milli for j in running}
            step = s.rebalance(t)
            counts["preempted"] += len(step.preempted)
            counts["resized"] += sum(1 for j in s.running.values() if j.id in before and j.milli != before[j.id])
        else:
            counts["preempted"] += len(s.schedule_step(t).preempted)
        check(s)
        for job in s.jobs:
            if job.state == QUEUED and job.preemptions:
                interval = job.request.checkpoint_interval_s
                if math.isfinite(interval):
                    assert job.lost_work_s <= job.preemptions * interval + 1e-6
    assert counts["preempted"] > 20 and counts["resized"] > 5 and counts["down"] > 10, counts
