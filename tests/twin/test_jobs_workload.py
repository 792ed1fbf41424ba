import numpy as np
import pytest

from powerplane.config import load_scenario
from powerplane.twin.jobs import State, compute_share
from powerplane.twin.twin import Twin


def test_compute_share_exact() -> None:
    f = np.array([0.7])
    # One whole iteration: share equals the compute fraction.
    assert compute_share(np.array([0.0]), np.array([1.0]), f)[0] == pytest.approx(0.7)
    # Inside the compute phase, then inside the collective phase.
    assert compute_share(np.array([0.1]), np.array([0.3]), f)[0] == pytest.approx(1.0)
    assert compute_share(np.array([0.75]), np.array([0.95]), f)[0] == pytest.approx(0.0)
    # Straddling the phase boundary: 0.6..0.8 -> 0.1 of 0.2 in compute.
    assert compute_share(np.array([0.6]), np.array([0.8]), f)[0] == pytest.approx(0.5)
    # Many iterations with a ragged end.
    assert compute_share(np.array([0.0]), np.array([10.5]), f)[0] == pytest.approx((7.0 + 0.5) / 10.5)


def _twin(seed: int = 3, dt: float = 1.0) -> Twin:
    site, path = load_scenario("small")
    return Twin(site, path, seed=seed, dt_s=dt)


def test_placement_never_double_books_gpus() -> None:
    tw = _twin()
    for _ in range(30):
        tw.advance(60)
        wl = tw.workload
        held = np.concatenate([wl.jobs.gpus[j] for j in wl.active] or [np.zeros(0, np.int64)])
        assert held.size == np.unique(held).size
        assert np.all(wl.gpu_job[held] >= 0)
        assert np.count_nonzero(wl.gpu_job >= 0) == held.size
        for j in wl.active:
            assert wl.jobs.gpus[j].size == wl.jobs.n_gpus[j]


def test_fault_restarts_from_last_checkpoint() -> None:
    tw = _twin()
    wl = tw.workload
    j = int(np.flatnonzero(wl.jobs.view("kind") == 0)[0])  # the pre-training job
    tw.advance(10)
    wl.trigger(j, "next_fail_s", tw.now_s + 5.0)
    done_before = wl.jobs.work_done_s[j]
    ckpt = wl.jobs.last_ckpt_work_s[j]
    tw.advance(10)
    assert wl.jobs.state[j] == State.STALLED
    assert wl.jobs.failures[j] == 1
    assert wl.jobs.work_done_s[j] == pytest.approx(ckpt)
    assert wl.jobs.lost_work_s[j] == pytest.approx(done_before + 5.0 - ckpt, abs=1.5)
    assert wl.xid_events and wl.xid_events[-1].job == j
    gpu = wl.xid_events[-1].gpu
    assert tw.read().metric("gpu", "last_xid")[gpu] == wl.xid_events[-1].xid
    # It stalls for the restart delay, ramps up, then runs again.
    _lo, hi = tw.site.workload.restart_delay_s
    tw.advance(int(hi) + int(wl.jobs.startup_s[j]) + 5)
    assert wl.jobs.state[j] in (State.RUNNING, State.CHECKPOINT)


def test_same_seed_same_run_different_seed_different_run() -> None:
    a, b, c = _twin(7), _twin(7), _twin(8)
    pa = [a.advance(60).plant.facility_power_w for _ in range(5)]
    pb = [b.advance(60).plant.facility_power_w for _ in range(5)]
    pc = [c.advance(60).plant.facility_power_w for _ in range(5)]
    np.testing.assert_array_equal(np.concatenate(pa), np.concatenate(pb))
    assert not np.array_equal(np.concatenate(pa), np.concatenate(pc))


def test_the_twin_places_jobs_through_the_pool_scheduler() -> None:
    from powerplane.twin.jobs import JobSpec, Kind, Priority

    tw = _twin()
    wl = tw.workload
    # Impossible requests are rejected at submit, with the reason.
    j = wl._submit(
        JobSpec(name="too-big", kind=Kind.BATCH, priority=Priority.LOW, n_gpus=10_000, work_s=60.0), tw.now_s
    )
    assert wl.jobs.state[j] == State.DONE and "GPU" in wl.rejected[j]
    # A core job that does not fit preempts lower classes, which go back to the queue from their checkpoint.
    low = [int(k) for k in wl.active if wl.jobs.priority[k] == Priority.LOW]
    free = int(np.count_nonzero(wl.gpu_job < 0))
    lost_before = wl.jobs.lost_work_s[: wl.jobs.n].sum()
    big = wl._submit(
        JobSpec(
            name="urgent",
            kind=Kind.FINETUNE,
            priority=Priority.CORE,
            n_gpus=free + 8,
            work_s=3600.0,
            checkpoint_interval_s=600.0,
            checkpoint_duration_s=10.0,
        ),
        tw.now_s,
    )
    if low:
        assert wl.jobs.state[big] in (State.STARTING, State.RUNNING)
        assert wl.jobs.view("preemptions").sum() >= 1
        preempted = np.flatnonzero(wl.jobs.view("preemptions") > 0)
        assert all(wl.jobs.state[k] in (State.QUEUED, State.STARTING, State.RUNNING) for k in preempted)
        assert wl.jobs.lost_work_s[: wl.jobs.n].sum() >= lost_before
    held = np.concatenate([wl.jobs.gpus[k] for k in wl.active])
    assert held.size == np.unique(held).size
