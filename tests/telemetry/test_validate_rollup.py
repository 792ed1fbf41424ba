from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerplane.config import load_scenario
from powerplane.core.frames import Frame
from powerplane.telemetry.ring import GpuRing
from powerplane.telemetry.snapshot import Quality
from powerplane.telemetry.tracker import Tracker
from powerplane.telemetry.validate import Limits, Validator
from powerplane.topology import Topology


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology.from_site(load_scenario("small")[0])


def _frame(topo: Topology, t: float, power: np.ndarray | None = None, **extra: np.ndarray) -> Frame:
    n = topo.n_gpus
    gpu = {
        "power_w": np.full(n, 300.0) if power is None else power,
        "temp_c": np.full(n, 55.0),
        "util_pct": np.full(n, 80.0),
        "energy_mj": np.full(n, 1e6) + t * 300e3,
    }
    gpu.update(extra)
    node = {"power_w": np.full(topo.n_nodes, 4000.0)}
    return Frame(t, "test", {"gpu": gpu, "node": node})


def test_every_bad_value_class_is_flagged_and_counted(topo: Topology) -> None:
    tr = Tracker(topo)
    tr.ingest(_frame(topo, 0.0))
    p = np.full(topo.n_gpus, 300.0)
    p[0], p[1], p[2], p[3] = np.nan, np.inf, -5.0, 5000.0  # H100 TDP 700 W -> limit 1,050 W
    temp = np.full(topo.n_gpus, 55.0)
    temp[4], temp[5] = 140.0, -40.0
    util = np.full(topo.n_gpus, 80.0)
    util[6] = 120.0
    snap = tr.ingest(_frame(topo, 1.0, p, temp_c=temp, util_pct=util))
    assert snap.rejected == Counter(
        {
            "nan": 1,
            "inf": 1,
            "negative_power": 1,
            "power_above_limit": 1,
            "temp_out_of_range": 2,
            "util_out_of_range": 1,
        }
    )
    q = snap.levels["gpu"].quality
    assert list(q["power_w"][:4]) == [Quality.INVALID] * 4 and q["power_w"][4] == Quality.OK
    # Bad values are kept for inspection but excluded from rollups; coverage says so.
    node0 = snap.rollups["node"]["gpu.power_w"]
    assert node0.sum[0] == pytest.approx(4 * 300.0) and node0.coverage[0] == pytest.approx(0.5)
    assert snap.rollups["site"]["gpu.power_w"].sum[0] == pytest.approx(300.0 * (topo.n_gpus - 4))
    assert snap.rollups["site"]["gpu.temp_c"].max[0] == pytest.approx(55.0)
    assert snap.rejected_total["nan"] == 1


def test_timestamps_duplicate_out_of_order_stale_and_missing(topo: Topology) -> None:
    v = Validator(np.full(topo.n_gpus, 700.0), Limits(stale_after_s=5.0))
    n = topo.n_gpus
    t = np.full(n, 100.0)
    f = _frame(topo, 100.0, t_s=t)
    v.validate(f)
    t2 = t.copy()
    t2[0] = 100.0  # duplicate (fresh)
    t2[1] = 90.0  # out of order
    t2[2:] = 101.0
    r = v.validate(_frame(topo, 101.0, t_s=t2))
    assert r.rejected["duplicate_timestamp"] == 1 and r.rejected["out_of_order"] == 1
    assert r.levels["gpu"].quality["power_w"][0] == Quality.OK
    assert r.levels["gpu"].quality["power_w"][1] == Quality.INVALID
    t3 = np.full(n, 110.0)
    t3[0] = 100.0  # the same reading 10 s later: stale
    reported = np.ones(n, dtype=bool)
    reported[7] = False
    r = v.validate(_frame(topo, 110.0, t_s=t3, _reported=reported))
    assert r.levels["gpu"].quality["temp_c"][0] == Quality.STALE and r.rejected["stale"] == 1
    assert r.levels["gpu"].quality["temp_c"][7] == Quality.MISSING and r.rejected["missing"] == 1


def test_energy_counters_wrap_reset_and_fallback(topo: Topology) -> None:
    lim = Limits(counter_max_mj=1e9)
    tr = Tracker(topo, limits=lim)
    n = topo.n_gpus
    e = np.full(n, 1e9 - 100e3)
    e[1] = 5e8
    tr.ingest(_frame(topo, 0.0, energy_mj=e))
    e2 = e + 300e3  # 300 J in 1 s
    e2[0] = 200e3  # wrapped past the counter's maximum: 100 J before, 200 J after
    e2[1] = 200e3  # reset (driver reload) from mid-range: 200 J since
    e2[2] = np.nan  # unreadable: fall back to power x time
    snap = tr.ingest(_frame(topo, 1.0, energy_mj=e2))
    assert snap.rejected["counter_wrap"] == 1 and snap.rejected["counter_reset"] == 1
    j = snap.gpu_energy_kwh * 3.6e6
    assert j[0] == pytest.approx(300.0) and j[1] == pytest.approx(200.0) and j[2] == pytest.approx(300.0)
    assert j[3] == pytest.approx(300.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 0.5))
def test_parent_equals_sum_of_reporting_children(seed: int, bad_share: float) -> None:
    topo = Topology.from_site(load_scenario("small")[0])
    rng = np.random.default_rng(seed)
    p = rng.uniform(50, 700, topo.n_gpus)
    bad = rng.uniform(size=topo.n_gpus) < bad_share
    p[bad] = np.nan
    tr = Tracker(topo)
    snap = tr.ingest(_frame(topo, 1.0, p))
    ok = ~bad
    for level in ("node", "rack", "row", "hall", "site"):
        idx = topo.parent_index("gpu", level)  # type: ignore[arg-type]
        r = snap.rollups[level]["gpu.power_w"]
        expect = np.bincount(idx[ok], weights=p[ok], minlength=topo.count(level))  # type: ignore[arg-type]
        cnt = np.bincount(idx[ok], minlength=topo.count(level))  # type: ignore[arg-type]
        np.testing.assert_allclose(np.where(cnt > 0, r.sum, 0.0), expect, rtol=1e-12)
        assert np.all(np.isnan(r.sum[cnt == 0]))
        np.testing.assert_allclose(r.coverage, cnt / np.bincount(idx, minlength=topo.count(level)))  # type: ignore[arg-type]


def test_job_power_energy_and_cost(topo: Topology) -> None:
    site = load_scenario("small")[0]
    tr = Tracker(topo, site)
    gpu_job = np.full(topo.n_gpus, -1)
    gpu_job[:16] = 3
    gpu_job[16:24] = 7
    tr.ingest(_frame(topo, 0.0), gpu_job)
    snap = tr.ingest(_frame(topo, 1.0), gpu_job)
    assert list(snap.job_ids) == [3, 7]
    np.testing.assert_allclose(snap.job_power_w, [16 * 300.0, 8 * 300.0])
    np.testing.assert_allclose(snap.job_energy_kwh * 3.6e6, [16 * 300.0, 8 * 300.0])
    assert np.all(snap.job_cost > 0)


def test_ring_buffer_is_bounded_and_ordered() -> None:
    ring = GpuRing(4, capacity=3)
    for k in range(5):
        ring.push(float(k), {"power_w": np.full(4, float(k))})
    t, data = ring.window()
    assert list(t) == [2.0, 3.0, 4.0] and list(data["power_w"][:, 0]) == [2.0, 3.0, 4.0]
    assert np.all(np.isnan(data["temp_c"]))
    t, data = ring.window(3.0, 10.0, gpus=np.array([1]))
    assert list(t) == [3.0, 4.0] and data["power_w"].shape == (2, 1)
    big = GpuRing.for_window(10_240, 600.0, 10.0)
    assert big.capacity == 6000 and big.nbytes < 520e6
