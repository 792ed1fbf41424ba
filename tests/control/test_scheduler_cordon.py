"""Single-GPU isolation in the scheduler: a cordoned GPU takes no new work (single GPUs, gangs, fractional shares,
preemption), its jobs move only when evicted, and uncordoning restores it (less what jobs still hold)."""

import numpy as np
import pytest

from powerplane.control.scheduler import GpuPool, JobRequest, Scheduler, SchedulerConfig


def names(s: Scheduler, t: float) -> list[str]:
    return s.schedule_step(t).started


def test_nothing_placed_on_a_cordoned_gpu_and_uncordon_restores() -> None:
    s = Scheduler(GpuPool.build([2], ["H100"]))
    assert s.cordon_gpu(0, 0.0) == []
    assert s.pool.gpu_cordoned.tolist() == [True, False] and s.pool.node_whole_free.tolist() == [1]
    s.submit(JobRequest("a", gpus=1), 1.0)
    s.submit(JobRequest("b", gpus=1), 1.0)
    assert names(s, 1.0) == ["a"] and s.allocation("a").tolist() == [1]
    assert names(s, 2.0) == [] and s.n_queued == 1  # GPU 0 is free but cordoned
    assert s.cordon_gpu(0, 2.0) == []  # idempotent
    assert s.uncordon_gpu(0, 3.0) and not s.uncordon_gpu(0, 3.0)
    assert names(s, 3.0) == ["b"] and s.allocation("b").tolist() == [0]
    with pytest.raises(ValueError, match="no GPU 2"):
        s.cordon_gpu(2, 4.0)


def test_gang_jobs_avoid_a_cordoned_gpu() -> None:
    s = Scheduler(GpuPool.build([8, 8, 8, 8], ["H100"] * 4, nodes_per_rack=2))
    s.cordon_gpu(3, 0.0)
    s.submit(JobRequest("big", gpus=32), 0.0)
    assert names(s, 0.0) == []  # 31 GPUs left: the 32-GPU gang cannot start
    s.cancel("big", 0.0)
    for name, gpus in (("g16", 16), ("g8", 8), ("g7", 7), ("one", 1)):
        s.submit(JobRequest(name, gpus=gpus), 1.0)
    assert names(s, 1.0) == ["g16", "g8", "g7"]
    assert s.allocation("g16").tolist() == list(range(16, 32))  # rack 0 has 15 whole GPUs: rack 1
    assert s.allocation("g8").tolist() == list(range(8, 16))
    assert s.allocation("g7").tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert s.n_queued == 1 and s.pool.free_milli[3] == 0  # "one" waits: only the cordoned GPU is free
    s.uncordon_gpu(3, 2.0)
    assert names(s, 2.0) == ["one"] and s.allocation("one").tolist() == [3]


def test_fractional_shares_avoid_a_cordoned_gpu_and_holders_move_only_when_evicted() -> None:
    s = Scheduler(GpuPool.build([2], ["H100"]))
    s.submit(JobRequest("h1", fraction=0.5), 0.0)
    assert names(s, 0.0) == ["h1"] and s.allocation("h1").tolist() == [0]
    assert s.cordon_gpu(0, 1.0) == ["h1"]  # still running there
    assert s.job("h1").state == 1 and s.pool.free_milli.tolist() == [0, 1000]
    s.submit(JobRequest("h2", fraction=0.5), 1.0)
    s.submit(JobRequest("q", fraction=0.25), 1.0)
    # binpack would fill GPU 0's free half first; cordoned, both go to GPU 1
    assert names(s, 1.0) == ["h2", "q"] and s.allocation("h2").tolist() == [1] and s.allocation("q").tolist() == [1]
    s.finish("h1", 2.0)
    assert s.pool.free_milli.tolist() == [0, 250]  # h1's share stays hidden
    s.submit(JobRequest("h3", fraction=0.5), 2.0)
    assert names(s, 2.0) == []
    assert s.evict_gpu(1, 3.0) == ["h2", "q"] and s.n_gpu_requeues == 2  # evicting needs no cordon
    assert s.cordon_gpu(1, 3.0) == []
    assert names(s, 3.0) == [] and s.pool.free_milli.tolist() == [0, 0]
    assert s.uncordon_gpu(0, 4.0)
    assert names(s, 4.0) == ["h2", "q"]  # requeued in their first order, ahead of h3: GPU 0 takes both
    assert s.allocation("q").tolist() == [0] and s.pool.free_milli.tolist() == [250, 0] and s.n_queued == 1


def test_uncordon_subtracts_what_jobs_still_hold() -> None:
    s = Scheduler(GpuPool.build([1], ["H100"]))
    s.submit(JobRequest("a", fraction=0.25), 0.0)
    s.submit(JobRequest("b", compute_pct=30, mem_mib=20_000), 0.0)
    assert names(s, 0.0) == ["a", "b"]
    assert s.cordon_gpu(0, 1.0) == ["a", "b"]
    s.uncordon_gpu(0, 2.0)
    assert s.pool.free_milli.tolist() == [450]
    assert s.pool.free_mem_mib.tolist() == [81_920 - 81_920 // 4 - 20_000]


def test_preemption_never_makes_room_on_a_cordoned_gpu() -> None:
    s = Scheduler(GpuPool.build([1, 1], ["H100", "H100"]))
    s.submit(JobRequest("low-a", gpus=1, priority="low"), 0.0)
    s.submit(JobRequest("low-b", gpus=1, priority="low"), 0.0)
    assert names(s, 0.0) == ["low-a", "low-b"] and s.allocation("low-a").tolist() == [0]
    s.cordon_gpu(0, 1.0)
    s.submit(JobRequest("core", gpus=1, priority="core"), 1.0)
    step = s.schedule_step(1.0)
    assert step.preempted == ["low-b"] and step.started == ["core"] and s.allocation("core").tolist() == [1]
    s.submit(JobRequest("core2", gpus=1, priority="core"), 2.0)
    assert s.schedule_step(2.0).preempted == []  # only low-a is left to preempt, on the cordoned GPU


def test_cordon_survives_a_node_going_down_and_up() -> None:
    s = Scheduler(GpuPool.build([4], ["H100"]), SchedulerConfig(preemption=False))
    s.cordon_gpu(2, 0.0)
    s.node_down(0, 1.0)
    s.uncordon_gpu(1, 1.0)  # not cordoned: nothing changes
    s.node_up(0, 2.0)
    assert s.pool.free_milli.tolist() == [1000, 1000, 0, 1000] and s.pool.node_whole_free.tolist() == [3]
    s.submit(JobRequest("four", gpus=4), 2.0)
    s.submit(JobRequest("three", gpus=3), 2.0)
    assert names(s, 2.0) == ["three"] and np.array_equal(s.allocation("three"), [0, 1, 3])
    tl = s.expected_timeline(2.0)
    assert tl.start_s[tl.names.index("four")] == np.inf  # 3 GPUs in service: the 4-GPU job cannot be projected
