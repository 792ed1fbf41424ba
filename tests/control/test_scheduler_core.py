"""Scheduler decisions on tiny pools: order, backfill, preemption from checkpoints, nodes, power, windows."""

import math

import numpy as np
import pytest

from powerplane.control.scheduler import GpuPool, JobRequest, PriorityClass, Scheduler, SchedulerConfig
from powerplane.control.scheduler.job import QUEUED, RUNNING


def _sched(node_gpus: list[int], config: SchedulerConfig | None = None, per_rack: int = 4) -> Scheduler:
    return Scheduler(GpuPool.build(node_gpus, ["H100"] * len(node_gpus), nodes_per_rack=per_rack), config)


def test_submit_rejects_with_reason_and_keeps_the_pool() -> None:
    s = _sched([4, 4])
    assert s.submit(JobRequest("big", gpus=9), 0).reason == "needs 9 GPUs, the pool has 8"
    assert "unknown GPU model" in s.submit(JobRequest("m", model="MI300X"), 0).reason
    assert "not allowed" in s.submit(JobRequest("f", fraction=1 / 3), 0).reason
    assert s.submit(JobRequest("ok", fraction=0.125), 0).accepted
    assert "already submitted" in s.submit(JobRequest("ok"), 0).reason
    assert [a.name for a in s.rejected] == ["big", "m", "f", "ok"]
    assert s.n_queued == 1 and s.pool.allocated_milli == 0


def test_classes_go_in_weight_order() -> None:
    s = _sched([2])
    for name, prio in [("a", "low"), ("b", "normal"), ("c", "core")]:
        s.submit(JobRequest(name, priority=prio), 0)
    assert s.schedule_step(0).started == ["c", "b"]
    assert s.job("a").state == QUEUED


def test_backfill_versus_strict_fifo() -> None:
    for order, expect in [("priority", ["small"]), ("fifo", [])]:
        cfg = SchedulerConfig(order=order, preemption=False)  # type: ignore[arg-type]
        s = _sched([4], cfg)
        s.submit(JobRequest("held", gpus=2), 0)
        s.schedule_step(0)
        s.submit(JobRequest("big", gpus=4), 1)
        s.submit(JobRequest("small", gpus=1), 2)
        assert s.schedule_step(3).started == expect, order


def test_weighted_fair_share_picks_the_tenant_below_its_share() -> None:
    s = _sched([4], SchedulerConfig(tenant_weights={"a": 1.0, "b": 3.0}))
    s.submit(JobRequest("a0", tenant="a"), 0)
    s.submit(JobRequest("b0", tenant="b"), 0)
    s.schedule_step(0)  # each tenant holds one GPU: usage / weight is 1000 for a, 333 for b
    for i in range(1, 4):
        s.submit(JobRequest(f"a{i}", tenant="a"), 1)
        s.submit(JobRequest(f"b{i}", tenant="b"), 1)
    assert s.schedule_step(2).started == ["b1", "b2"]


def test_preemption_takes_the_cheapest_victim_and_keeps_its_checkpoint() -> None:
    s = _sched([1, 1])
    s.submit(JobRequest("often", priority="low", checkpoint_interval_s=100.0), 0)
    s.submit(JobRequest("rarely", priority="low", checkpoint_interval_s=1000.0), 0)
    s.schedule_step(0)
    s.submit(JobRequest("urgent", priority="core"), 250)
    step = s.schedule_step(250)
    # "often" checkpointed at 200 s of work and loses 50 s; "rarely" would lose all 250 s.
    assert step.preempted == ["often"] and step.started == ["urgent"]
    job = s.job("often")
    assert job.state == QUEUED and job.work_done_s == 200.0 and job.lost_work_s == 50.0 and job.preemptions == 1
    assert s.n_preemptions == 1 and s.lost_work_gpu_s == 50.0
    # It resumes from its checkpoint when room returns.
    s.finish("urgent", 300)
    assert s.schedule_step(300).started == ["often"]
    assert s.job("often").progress_s(400) == 300.0


def test_preemption_prefers_the_lowest_class_over_less_lost_work() -> None:
    s = _sched([1, 1])
    s.submit(JobRequest("normal", priority="normal", checkpoint_interval_s=10.0), 0)
    s.submit(JobRequest("low", priority="low"), 0)
    s.schedule_step(0)
    s.submit(JobRequest("urgent", priority="core"), 1000)
    assert s.schedule_step(1000).preempted == ["low"]  # loses 1000 s but weighs 0.2 < 0.5


def test_no_preemption_of_equal_or_higher_class_or_when_disabled() -> None:
    s = _sched([1])
    s.submit(JobRequest("n1", priority="normal"), 0)
    s.schedule_step(0)
    s.submit(JobRequest("n2", priority="normal"), 1)
    assert s.schedule_step(1).preempted == []
    s2 = _sched([1], SchedulerConfig(preemption=False))
    s2.submit(JobRequest("l", priority="low"), 0)
    s2.schedule_step(0)
    s2.submit(JobRequest("c", priority="core"), 1)
    assert s2.schedule_step(1).started == []


def test_fraction_preempts_only_what_it_needs() -> None:
    s = _sched([2])
    for name in ("l1", "l2", "l3"):
        s.submit(JobRequest(name, priority="low", fraction=0.5), 0)
    s.schedule_step(0)  # l1 and l2 share GPU 0, l3 on GPU 1 (binpack)
    s.submit(JobRequest("c", priority="core", fraction=0.5), 5)
    step = s.schedule_step(5)
    assert step.started == ["c"] and len(step.preempted) == 0  # GPU 1 still has half free
    s.submit(JobRequest("c2", priority="core", gpus=1), 6)
    step = s.schedule_step(6)
    assert step.started == ["c2"] and len(step.preempted) == 2  # a whole GPU: both halves on one GPU go


def test_gang_preemption_clears_whole_nodes() -> None:
    s = _sched([4, 4, 4], per_rack=3)
    for i in range(3):
        s.submit(JobRequest(f"l{i}", priority="low", gpus=1), 0)
    s.schedule_step(0)  # binpack: all three on node 0
    s.submit(JobRequest("n", priority="normal", gpus=4), 0)
    s.submit(JobRequest("n2", priority="normal", gpus=4), 0)
    s.schedule_step(0)
    s.submit(JobRequest("gang", priority="core", gpus=8), 10)
    step = s.schedule_step(10)
    # Node 0 (three low jobs, 0.2 x (60 + 10) each) plus one normal node (0.5 x (60 + 40)) costs 92; the two
    # normal nodes would cost 100.
    assert step.started == ["gang"] and sorted(step.preempted) == ["l0", "l1", "l2", "n"]
    assert s.job("n2").state == RUNNING


def test_record_checkpoint_means_nothing_is_lost() -> None:
    s = _sched([1])
    s.submit(JobRequest("l", priority="low"), 0)
    s.schedule_step(0)
    s.record_checkpoint("l", 500)
    assert s.preempt("l", 500) == 0.0 and s.job("l").work_done_s == 500.0


def test_node_down_requeues_everything_on_it() -> None:
    s = _sched([4, 4], per_rack=2)
    s.submit(JobRequest("gang", gpus=6, checkpoint_interval_s=60.0), 0)
    s.submit(JobRequest("solo", gpus=1), 0)
    s.schedule_step(0)
    gang_nodes = set(s.pool.gpu_node[s.allocation("gang")].tolist())
    assert gang_nodes == {0, 1}
    assert s.allocation("solo").tolist() == [6]  # binpack: the node with the fewest whole GPUs
    hit = s.node_down(1, 100)
    assert sorted(hit) == ["gang", "solo"]
    assert s.job("gang").state == QUEUED and s.job("gang").work_done_s == 60.0
    assert s.pool.free_milli[4:].tolist() == [0, 0, 0, 0]
    assert s.pool.allocated_milli == sum(j.milli * j.gpus.size for j in s.running.values())
    assert s.schedule_step(100).started == ["solo"]  # the gang's 6 GPUs do not exist while node 1 is down
    s.node_up(1, 200)
    assert "gang" in s.schedule_step(200).started
    assert all(j.state in (QUEUED, RUNNING) for j in s.jobs)


def test_power_budget_limits_starts() -> None:
    classes = (PriorityClass("core", 0.9, may_exceed_power_budget=True), PriorityClass("low", 0.2))
    s = _sched([4], SchedulerConfig(classes=classes))
    s.set_power_budget(1000.0)  # one H100 at 590 W fits, two do not
    for name in ("l1", "l2"):
        s.submit(JobRequest(name, priority="low"), 0)
    assert s.schedule_step(0).started == ["l1"] and s.committed_w == 590.0
    s.submit(JobRequest("c", priority="core"), 1)
    assert s.schedule_step(1).started == ["c"]  # core may exceed
    s.set_power_budget(2000.0, lambda req, gpus, milli: 100.0 * gpus.size)
    assert s.committed_w == 200.0
    assert s.schedule_step(2).started == ["l2"]
    s.set_power_budget(150.0)
    assert sorted(s.shed_power(3)) == ["l1", "l2"] and s.committed_w == 100.0


def test_deferrable_waits_for_a_cheap_window_or_its_deadline() -> None:
    s = _sched([2])
    # Median cost 0.15: the 0.05 and 0.10 windows are cheap.
    s.set_plan([(0.0, 100.0, 0.20), (100.0, 200.0, 0.05), (200.0, 300.0, 0.30), (300.0, 400.0, 0.10)])
    s.submit(JobRequest("flex", deferrable=True, est_duration_s=50.0), 0)
    s.submit(JobRequest("tight", deferrable=True, est_duration_s=30.0, deadline_s=70.0), 0)
    assert s.schedule_step(0).started == []
    assert s.next_wakeup_s(0) == 40.0  # "tight" must start by 70 - 30
    assert s.schedule_step(40).started == ["tight"]
    assert s.next_wakeup_s(41) == 100.0
    assert s.schedule_step(100).started == ["flex"]


def test_expected_timeline_and_power_profile() -> None:
    s = _sched([1])
    s.submit(JobRequest("r", est_duration_s=100.0), 0)
    s.schedule_step(0)
    s.submit(JobRequest("q", est_duration_s=50.0, priority="low"), 5)
    s.submit(JobRequest("n", est_duration_s=20.0, priority="normal"), 6)
    tl = s.expected_timeline(10)
    rec = {r["name"]: (r["state"], r["start_s"], r["end_s"]) for r in tl.to_records()}
    assert rec == {"r": ("running", 0.0, 100.0), "n": ("queued", 100.0, 120.0), "q": ("queued", 120.0, 170.0)}
    assert tl.power_profile_w(np.array([50.0, 110.0, 200.0])).tolist() == [590.0, 590.0, 0.0]


def test_rebalance_shrinks_idle_grows_starved_and_restores_fair_share() -> None:
    s = _sched([1])
    s.submit(JobRequest("nb", fraction=0.5), 0)
    s.schedule_step(0)
    s.report_usage("nb", 0.02, 0)
    s.rebalance(1000)
    assert s.job("nb").milli == 100 and s.pool.free_milli[0] == 900  # shrunk to the floor
    s.report_usage("nb", 1.0, 1000)
    s.rebalance(2000)
    assert s.job("nb").milli == 500  # back to its request

    s2 = _sched([2], SchedulerConfig(starve_after_s=600.0))
    s2.submit(JobRequest("a1", tenant="a", checkpoint_interval_s=100.0), 0)
    s2.submit(JobRequest("a2", tenant="a", checkpoint_interval_s=100.0), 0)
    s2.schedule_step(0)
    s2.submit(JobRequest("b1", tenant="b"), 10)
    assert s2.schedule_step(10).started == []
    assert s2.rebalance(300).started == []  # not waiting long enough yet
    step = s2.rebalance(700)
    assert step.started == ["b1"] and len(step.preempted) == 1
    assert s2.job(step.preempted[0]).work_done_s == 700.0


def test_rebalance_reclaims_idle_whole_gpus_only_when_others_wait() -> None:
    s = _sched([1])
    s.submit(JobRequest("idle", priority="low"), 0)
    s.schedule_step(0)
    s.report_usage("idle", 0.0, 0)
    assert s.rebalance(1000).preempted == []  # nobody waits
    s.submit(JobRequest("other", priority="low"), 1000)
    step = s.rebalance(1001)
    assert step.preempted == ["idle"] and step.started == ["other"]  # the idle job went to the back


def test_cancel_and_finish() -> None:
    s = _sched([1])
    s.submit(JobRequest("a"), 0)
    s.submit(JobRequest("b"), 0)
    s.schedule_step(0)
    assert s.cancel("b", 1) and s.n_queued == 0
    assert s.cancel("a", 2) and s.pool.allocated_milli == 0
    assert not s.cancel("a", 3)
    with pytest.raises(ValueError, match="not running"):
        s.finish("a", 4)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="15-30 min"):
        SchedulerConfig(rebalance_interval_s=60.0)
    with pytest.raises(ValueError, match="weight"):
        PriorityClass("x", 1.5)
    fifo = SchedulerConfig.fifo_first_fit()
    assert (fifo.order, fifo.policy, fifo.preemption) == ("fifo", "firstfit", False)
    assert math.isinf(Scheduler(GpuPool.build([1], ["H100"])).budget_w)
