"""JobState: levels, checkpoint rhythm, stalls, class profiles and fallbacks, on exact small cases."""

from __future__ import annotations

import numpy as np
import pytest

from powerplane.forecast.jobstate import JobState, gpu_bucket


def _feed(state: JobState, series: dict[int, list[float]]) -> None:
    n = len(next(iter(series.values())))
    for m in range(n):
        ids = np.array([j for j, s in series.items() if np.isfinite(s[m])], dtype=np.int64)
        p = np.array([series[j][m] for j in ids.tolist()])
        state.observe(m, ids, p)


def _feed_from(state: JobState, m0: int, series: dict[int, list[float]]) -> None:
    for k in range(len(next(iter(series.values())))):
        ids = np.array(list(series), dtype=np.int64)
        state.observe(m0 + k, ids, np.array([series[j][k] for j in ids.tolist()]))


def test_level_is_kept_and_ends_remove_power() -> None:
    st = JobState()
    st.describe(np.array([0, 1]), np.array([3, 3]), np.array([8, 8]), end_min=np.array([np.inf, 12.0]))
    _feed(st, {0: [1000.0] * 10, 1: [500.0] * 10})
    pr = st.project(np.array([1, 2, 3]), 9)
    assert pr.now_w == 1500.0
    # job 1 ends at minute 12: gone from horizon 3 on
    assert pr.end_w.tolist() == [0.0, 0.0, -500.0]
    assert pr.end_gpus.tolist() == [0.0, 0.0, 8.0]
    assert np.allclose(pr.ckpt_w, 0.0) and np.allclose(pr.ramp_w, 0.0)


def test_checkpoint_rhythm_predicts_the_next_dip() -> None:
    st = JobState()
    st.describe(np.array([0]), np.array([0]), np.array([64]))
    s = [1000.0] * 50
    for m in (5, 15, 25, 35):  # a 1-minute dip every 10 minutes
        s[m] = 300.0
    _feed(st, {0: s[:40]})
    assert abs(st.period_min[0] - 10.0) < 0.05
    pr = st.project(np.arange(1, 11), 39)
    due = np.flatnonzero(pr.ckpt_w < -100) + 1  # horizons with a dip
    assert due.tolist() == [6]  # minute 45
    assert np.isclose(pr.ckpt_w[5], -700.0, rtol=0.3)


def test_a_rhythm_learned_wrong_relocks_onto_evenly_spaced_checkpoints() -> None:
    st = JobState()
    st.describe(np.array([0]), np.array([0]), np.array([64]))
    s = [1000.0] * 70
    for m in (5, 16, 31, 46):  # two dips 11 minutes apart teach a period of 11; the true one is 15
        s[m] = 300.0
    _feed(st, {0: s[:30]})
    assert abs(st.period_min[0] - 11.0) < 0.1
    _feed_from(st, 30, {0: s[30:48]})
    assert st.period_min[0] == pytest.approx(15.0)  # 31 and 46 are off the beat of 11 and 15 apart, like 16 and 31
    pr = st.project(np.arange(1, 20), 47)
    assert (np.flatnonzero(pr.ckpt_w < -100) + 1 + 47).tolist() == [61]


def test_a_stall_returns_after_the_learned_restart_delay_then_ramps() -> None:
    st = JobState()
    st.describe(np.array([0]), np.array([0]), np.array([64]))
    st.flat_samples_min, st.flat_weights, st.ramp_len_min = np.array([6.0, 10.0]), np.array([1.0, 1.0]), 4.0
    s = [1000.0] * 20 + [100.0] * 4  # stalled for 4 minutes at the end (minutes 20-23)
    _feed(st, {0: s})
    pr = st.project(np.array([1, 5, 10, 20]), len(s) - 1)
    # minute 23 + h is (3.5 + h - D) / 4 of the way up the ramp, D the median learned flat duration (6 of 6, 10)
    assert np.allclose(pr.now_w + pr.stall_w, [100.0, 100.0 + 900.0 * 0.625, 1000.0, 1000.0])
    assert np.allclose(pr.ckpt_w, 0.0)  # a stall's return is its own feature, not a checkpoint's
    assert np.allclose(pr.job_delta_w[0], pr.stall_w)
    # flat for 8 minutes: only the 10-minute restart delay is still possible
    _feed_from(st, 24, {0: [100.0] * 4})
    pr = st.project(np.array([3, 4]), 27)
    assert np.allclose(pr.now_w + pr.stall_w, [100.0 + 900.0 * 0.125, 100.0 + 900.0 * 0.375])


def test_stalls_of_training_jobs_teach_the_restart_delay_not_service_dips() -> None:
    st = JobState()
    st.describe(np.array([0, 1]), np.array([0, 2]), np.array([64, 64]))
    train = [1000.0] * 10 + [100.0] * 7 + [400.0, 700.0] + [1000.0] * 5
    service = [1000.0] * 10 + [300.0] * 12 + [1000.0] * 2  # an inference service's load falling for 12 minutes
    _feed(st, {0: train, 1: service})
    assert st.flat_samples_min.tolist() == [7.0, 7.0]  # the prior and the training job's 7 flat minutes
    assert st.ramp_samples_min.tolist() == [5.0, 2.0]  # the prior and the training job's 2-minute ramp
    assert st.ramp_len_min == pytest.approx(3.5)  # their median, for jobs that have not restarted yet
    assert st.own_ramp_min[0] == pytest.approx(2.0) and np.isnan(st.own_ramp_min[1])  # the job restarts its way


def test_services_repeat_with_their_learned_period() -> None:
    st = JobState()
    st.describe(np.array([0, 1]), np.array([2, 0]), np.array([8, 8]))
    t = np.arange(400)
    load = 1000.0 + 300.0 * np.sin(2 * np.pi * t / 45.5)
    _feed(st, {0: load.tolist(), 1: [2000.0] * 400})
    assert abs(st.service_period_min - 45.5) < 0.06
    pr = st.project(np.array([1, 15, 50]), 399)
    want = 1000.0 + 300.0 * np.sin(2 * np.pi * (399 + np.array([1, 15, 50])) / 45.5) - load[-1]
    assert np.allclose(pr.service_w, want, atol=15.0)
    # a service's dips are its load, not checkpoints or stalls; the training job stays at its level
    assert np.allclose(pr.ckpt_w, 0.0) and np.allclose(pr.stall_w, 0.0) and np.allclose(pr.level_w, 0.0)


def test_young_jobs_use_the_class_profile_and_unknown_ones_a_fallback() -> None:
    st = JobState()
    st.describe(np.array([0, 1, 2]), np.array([3, 3, -1]), np.array([8, 8, 4]))
    _feed(st, {0: [800.0] * 6, 1: [np.nan] * 5 + [100.0], 2: [np.nan] * 5 + [50.0]})
    pr = st.project(np.array([1]), 5)
    # job 1 (young, its class has a profile: 100 W/GPU) heads to 800 W; job 2 has no class profile: fleet fallback
    assert pr.ramp_w[0] > 700.0 + 0.5 * (4 * 100.0 - 50.0)
    assert pr.fallback_w == 50.0
    prof, fb = st.profile_w(np.array([2]))
    assert fb.tolist() == [True] and prof[0] > 0  # never zero


def test_bad_values_are_dropped_not_zeroed() -> None:
    st = JobState()
    st.observe(0, np.array([0, 1]), np.array([1000.0, 500.0]))
    st.observe(1, np.array([0, 1]), np.array([np.nan, -5.0]))
    assert st.last_w[:2].tolist() == [1000.0, 500.0]
    assert st.active(1).size == 0 and st.active(0).tolist() == [0, 1]


def test_gpu_bucket_edges() -> None:
    assert gpu_bucket(np.array([1, 3, 7, 31, 255, 256])).tolist() == [0, 1, 2, 3, 4, 5]


def test_the_restart_delay_is_the_gpu_weighted_median_of_the_stalls_seen() -> None:
    st = JobState()
    # flat durations seen: 8, 10 and 12 minutes on an 8,192-GPU job, 400 (a pause, not a fault) on 128 GPUs
    st.flat_samples_min = np.array([12.0, 400.0, 8.0, 10.0])
    st.flat_weights = np.array([8192.0, 128.0, 8192.0, 8192.0])
    got = st._median_flat_min(np.array([1.0, 9.0, 11.0, 13.0, 500.0]))
    assert got.tolist() == [10.0, 12.0, 12.0, 400.0, 501.0]  # longer than every one seen: it ends about now
    # (a mean over the samples would put the first at 107.5 minutes, pulled by the one pause)


def test_a_job_restarts_along_its_own_ramp_and_steps_up_to_its_level() -> None:
    st = JobState()
    st.describe(np.array([0]), np.array([0]), np.array([64]))
    # a stall: 6 flat minutes at 200 W, a 3-minute start-up ramp to 680 W (60 % of the way), then the level
    first = [1000.0] * 20 + [200.0] * 6 + [360.0, 520.0, 680.0] + [1000.0] * 20
    _feed(st, {0: first})
    assert st.own_ramp_min[0] == pytest.approx(3.0)
    assert st.own_top[0] == pytest.approx(0.6)
    assert st.own_floor[0] == pytest.approx(0.2)
    # the next stall, 2 minutes flat so far: median delay 6 (the prior 7 weighs 1 GPU against 64), then the ramp
    _feed_from(st, 49, {0: [200.0, 200.0]})
    pr = st.project(np.array([4, 5, 6, 7, 8]), 50)
    # minute 50 + h is (h + 1.5 - 6) / 3 of the way up: 0.6 of the span times that, the level once it is done
    want = [200.0, 200.0 + 800.0 * 0.6 * 0.5 / 3, 200.0 + 800.0 * 0.6 * 1.5 / 3, 200.0 + 800.0 * 0.6 * 2.5 / 3, 1000.0]
    assert np.allclose(pr.now_w + pr.stall_w, want)


def test_a_deep_dip_off_the_beat_is_a_stall_from_its_first_minute() -> None:
    def rhythm(last: float) -> JobState:
        st = JobState()
        st.describe(np.array([0]), np.array([0]), np.array([64]))
        s = [1000.0] * 60
        for m in (10, 30, 50):  # checkpoints every 20 minutes
            s[m] = 400.0
        _feed(st, {0: [*s, last]})
        return st

    st = rhythm(500.0)  # minute 60: half way down, 10 minutes off the beat (the next checkpoint is due at 70)
    assert abs(st.period_min[0] - 20.0) < 0.3
    pr = st.project(np.array([1, 5]), 60)
    # a stall: it stays down (at its lowest so far, no stall floor learned yet) for the restart delay, where a
    # checkpoint or a blip would be back at the level
    assert np.allclose(pr.now_w + pr.job_delta_w.sum(axis=0), 500.0) and np.allclose(pr.ckpt_w, 0.0)
    st = rhythm(880.0)  # a shallow dip off the beat (a straggler): back at the level
    pr = st.project(np.array([1, 5]), 60)
    assert np.allclose(pr.stall_w, 0.0) and np.all(pr.now_w + pr.job_delta_w.sum(axis=0) > 990.0)


def test_a_checkpoint_off_its_beat_moves_the_beat_half_way() -> None:
    st = JobState()
    st.describe(np.array([0]), np.array([0]), np.array([64]))
    s = [1000.0] * 80
    for m in (10, 30, 50):
        s[m] = 400.0
    s[71] = 400.0  # a minute late
    _feed(st, {0: s[:60]})
    beat, period = st.anchor_f[0] + st.period_min[0], st.period_min[0]
    _feed_from(st, 60, {0: s[60:]})
    miss = st.dip_start_f[0] - beat
    assert 0.5 < miss < 1.5
    assert st.anchor_f[0] == pytest.approx(beat + 0.5 * miss)  # half of the miss: one dip's noise is damped
    assert st.period_min[0] == pytest.approx(period + 0.2 * miss)


def test_a_restart_restarts_the_checkpoint_beat_at_the_jobs_own_lag() -> None:
    st = JobState()
    st.describe(np.array([0]), np.array([0]), np.array([64]))
    s = [1000.0] * 55
    for m in (10, 30, 50):  # checkpoints every 20 minutes
        s[m] = 400.0
    # a stall at 55-64, the start-up ramp 65-67, back at the level 7/8 of the way through minute 68 (its mean 950
    # is 7/8 of the way from the ramp's last 600 to the level)
    s += [200.0] * 10 + [400.0, 500.0, 600.0, 950.0] + [1000.0] * 40
    _feed(st, {0: s[:69]})
    assert st.restart_f[0] == pytest.approx(68.125)
    assert st.anchor_f[0] == pytest.approx(68.125 + st.post_stall_lag_min)  # no lag of its own yet
    s[88] = 400.0  # the first checkpoint after the restart
    _feed_from(st, 69, {0: s[69:95]})
    assert st.own_lag_min[0] == pytest.approx(st.dip_start_f[0] - 68.125 - st.period_min[0])
