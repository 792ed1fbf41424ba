import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from powerplane.config import load_scenario
from powerplane.telemetry.exposition import MetricsServer, SnapshotCollector
from powerplane.telemetry.tracker import Tracker
from powerplane.twin.twin import Twin


@pytest.fixture(scope="module")
def tracked() -> tuple[Twin, Tracker]:
    site, path = load_scenario("small")
    tw = Twin(site, path, seed=0)
    tr = Tracker(tw.topo, site)
    for _ in range(3):
        tw.advance(1)
        tr.ingest(tw.read(), tw.workload.gpu_job)
    return tw, tr


def test_metrics_parse_with_prometheus_client_and_match_the_snapshot(tracked: tuple[Twin, Tracker]) -> None:
    tw, tr = tracked
    snap = tr.last
    assert snap is not None
    text = SnapshotCollector(tw.topo).render(snap, "CNY")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    gpu = fams["powerplane_gpu_power_watts"]
    assert gpu.type == "gauge" and len(gpu.samples) == 256
    got = np.array([s.value for s in gpu.samples])
    np.testing.assert_allclose(got, snap.levels["gpu"].values["power_w"])
    assert gpu.samples[0].labels["uuid"] == tw.topo.gpu_uuids[0]
    racks = fams["powerplane_rack_power_watts"]
    np.testing.assert_allclose(sorted(s.value for s in racks.samples), sorted(snap.rollups["rack"]["node.power_w"].sum))
    assert fams["powerplane_gpu_energy_joules"].type == "counter"
    assert fams["powerplane_job_cost"].samples[0].labels["currency"] == "CNY"
    assert "powerplane_site_pue_ratio" in fams and "powerplane_site_grid_frequency_hertz" in fams


def test_invalid_values_are_left_out_and_rejections_exported(tracked: tuple[Twin, Tracker]) -> None:
    tw, tr = tracked
    tw.advance(1)
    frame = tw.read()
    frame.levels["gpu"]["power_w"][:3] = [np.nan, -1.0, 1e6]
    snap = tr.ingest(frame, tw.workload.gpu_job)
    fams = {f.name: f for f in text_string_to_metric_families(SnapshotCollector(tw.topo).render(snap))}
    assert len(fams["powerplane_gpu_power_watts"].samples) == 253
    rej = {s.labels["reason"]: s.value for s in fams["powerplane_rejected_values"].samples}
    assert rej["nan"] >= 1 and rej["negative_power"] >= 1 and rej["power_above_limit"] >= 1


def test_served_over_http(tracked: tuple[Twin, Tracker]) -> None:
    tw, tr = tracked
    col = SnapshotCollector(tw.topo)
    assert tr.last is not None
    last = tr.last
    srv = MetricsServer(lambda: col.render(last), port=0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "powerplane_site_gpu_power_watts" in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/other", timeout=10)
    finally:
        srv.close()
