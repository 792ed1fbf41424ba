"""Rack forecasts follow the jobs on each rack (GPU -> job placement); the weather forecast feeds the cooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerplane.config.loader import load_scenario
from powerplane.forecast.live import LiveForecaster
from powerplane.forecast.placement import job_delta_per_gpu, marginal_ratio, rack_forecast
from powerplane.topology import Topology


@pytest.fixture(scope="module")
def topo() -> Topology:
    site, _ = load_scenario("small")
    return Topology.from_site(site)


def test_a_rack_follows_its_jobs_and_the_racks_add_up_to_the_site(topo: Topology) -> None:
    rack_of = topo.parent_index("gpu", "rack")
    gpu_job = np.full(topo.n_gpus, -1, np.int64)
    r0 = np.flatnonzero(rack_of == 0)
    r1 = np.flatnonzero(rack_of == 1)
    gpu_job[r0] = 3  # job 3 fills rack 0
    gpu_job[r1[:4]] = 8  # job 8: four GPUs of rack 1 ...
    gpu_job[np.flatnonzero(rack_of == 2)[:4]] = 8  # ... and four of rack 2
    rack_now = np.full(topo.n_racks, 1000.0)
    ids = np.array([3, 8])
    delta = np.array([[-400.0, -800.0], [200.0, 0.0]])  # job 3 checkpoints, job 8 grows at the first horizon
    site = np.array([-300.0 * 2.0 + 200.0 * 2.0 + 60.0, -800.0 * 2.0])  # IT: 2 W per job W, 60 W beyond the jobs
    lo = np.array([50.0, 100.0]) * topo.n_racks
    p10, p50, p90 = rack_forecast(topo, rack_now, site, lo, 2 * lo, gpu_job, ids, delta, 2.0)
    share = 1.0 / topo.n_racks
    assert p50[0].tolist() == pytest.approx(
        [1000.0 - 800.0 + (site[0] - 2 * (-400.0 + 200.0)) * share, 1000.0 - 1600.0 + (site[1] + 1600.0) * share]
    )
    assert p50[1, 0] == pytest.approx(1000.0 + 2.0 * 100.0 + (site[0] + 400.0) * share)  # half of job 8
    assert p50[2, 0] == pytest.approx(p50[1, 0]) and p50[5, 1] == pytest.approx(1000.0)
    assert (p50 - rack_now[:, None]).sum(axis=0) == pytest.approx(site)
    assert (p50 - p10)[:, 0] == pytest.approx(np.full(topo.n_racks, 50.0))
    assert (p90 - p50)[:, 1] == pytest.approx(np.full(topo.n_racks, 200.0))
    # without a placement the site's change is shared by power
    _, flat, _ = rack_forecast(topo, rack_now, site, lo, lo, None, ids, delta, 2.0)
    assert flat[:, 0] == pytest.approx(1000.0 + site[0] * share)


def test_gpu_shares_and_the_marginal_ratio() -> None:
    d = job_delta_per_gpu(np.array([2, -1, 2, 9]), np.array([2]), np.array([[10.0]]))
    assert d.tolist() == [[5.0, 0.0, 5.0, 0.0]]  # job 9 is not in the projection: nothing
    assert marginal_ratio(np.ones(5), np.ones(5)) == 1.0  # too few changes: the prior
    assert marginal_ratio(np.array([9.0, -9.0] * 6), np.array([1.0, -1.0] * 6)) == 3.0  # clipped


def test_weather_forecast_ahead_with_persistence_of_its_error(topo: Topology) -> None:
    site, _ = load_scenario("small")
    fc = LiveForecaster(site, topo)
    fc.base_min = 1000
    fc._temp.ensure(10)
    fc._temp.a[:3] = [20.0, 21.0, 22.0]
    assert fc._temp_ahead(2, 3).tolist() == [20.0, 21.0, 22.0]  # no forecast: what was seen
    fc.set_weather(lambda t_s: (t_s / 60.0 - 1000.5) * 0.5 + 10.0)  # 10 C at minute 0, +0.5 C a minute
    # minute 2 was forecast at 11 C and observed at 22 C: the 11 C error persists
    assert fc._temp_ahead(2, 3).tolist() == pytest.approx([20.0, 21.0, 22.0, 22.5, 23.0, 23.5])


def test_placement_describes_new_jobs_from_the_job_table(topo: Topology, tmp_path: Path) -> None:
    site, _ = load_scenario("small")
    fc = LiveForecaster(site, topo)
    jobs = type("Jobs", (), {"n": 2, "kind": np.array([2, 0]), "n_gpus": np.array([8, 64]), "names": ["i", "p"]})()
    wl = type("Workload", (), {"gpu_job": np.full(topo.n_gpus, -1, np.int64), "jobs": jobs})()
    fc.set_placement(wl)
    assert fc.gpu_job is not None and fc.state.kind[:2].tolist() == [2, 0] and fc.state.n_gpus[:2].tolist() == [8, 64]
    # the scheduler's timeline names jobs by attempt: a running one's expected end becomes its end minute
    fc.base_min = 100
    fc._describe_ends(["p#2", "x#1", "i#1"], np.array([True, True, False]), np.array([7200.0, 60.0, 60.0]))
    assert fc.state.end_min[:2].tolist() == [np.inf, 20.0]
    fc.set_placement(type("Bus", (), {"gpu_job": np.zeros(3, np.int64)})())  # wrong size: no placement
    assert fc.gpu_job is None
