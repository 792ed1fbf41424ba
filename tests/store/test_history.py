"""HistoryStore: exact bucket means, quality and coverage, series, retention, Parquet, reopening, back-pressure."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from powerplane.config import load_scenario
from powerplane.store.history import HistoryStore, Retention
from powerplane.telemetry.snapshot import LevelData, Quality, Rollup, Snapshot
from powerplane.topology import Topology

T0 = 1_780_000_020.0  # a whole minute
QMAX = 1000  # tests submit faster than any cycle; only the back-pressure test uses a small queue


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology.from_site(load_scenario("small")[0])  # 256 GPUs, 32 nodes, 8 racks, 2 rows, 1 hall


def rollup(topo: Topology, v: np.ndarray, ok: np.ndarray, parent: str) -> Rollup:
    idx = topo.parent_index("gpu", parent)  # type: ignore[arg-type]
    n = topo.count(parent)  # type: ignore[arg-type]
    cnt = np.bincount(idx[ok], minlength=n)
    s = np.bincount(idx[ok], weights=v[ok], minlength=n).astype(np.float64)
    mx = np.full(n, -np.inf)
    np.maximum.at(mx, idx[ok], v[ok])
    empty = cnt == 0
    s[empty] = mx[empty] = np.nan
    with np.errstate(invalid="ignore"):
        mean = s / cnt
    return Rollup(s, mean, mx, cnt / np.bincount(idx, minlength=n), cnt)


def snap(
    topo: Topology,
    t_s: float,
    power: float | np.ndarray,
    temp: float | np.ndarray = 50.0,
    util: float | np.ndarray = 80.0,
    bad: np.ndarray | None = None,
    site: dict[str, float] | None = None,
    jobs: dict[int, tuple[float, float, float]] | None = None,
    energy: np.ndarray | None = None,
) -> Snapshot:
    """A snapshot of ``topo`` with the given GPU readings; ``bad`` GPUs are flagged MISSING with a wild value."""
    n = topo.n_gpus
    q = np.zeros(n, dtype=np.uint8)
    gpu = LevelData()
    for metric, x in (("power_w", power), ("temp_c", temp), ("util_pct", util)):
        v = np.broadcast_to(np.asarray(x, dtype=np.float64), (n,)).copy()
        qq = q.copy()
        if bad is not None:
            v[bad] = 1e9
            qq[bad] = Quality.MISSING
        gpu.values[metric], gpu.quality[metric] = v, qq
    rollups: dict[str, dict[str, Rollup]] = {lvl: {} for lvl in ("node", "rack", "row", "hall", "site")}
    for metric, v in gpu.values.items():
        ok = (gpu.quality[metric] == Quality.OK) & np.isfinite(v)
        for lvl, by_metric in rollups.items():
            by_metric[f"gpu.{metric}"] = rollup(topo, v, ok, lvl)
    site_data = LevelData()
    for k, x in (site or {}).items():
        site_data.values[k] = np.array([x])
        site_data.quality[k] = np.zeros(1, dtype=np.uint8)
    j = jobs or {}
    return Snapshot(
        t_s=t_s,
        seq=round(t_s * 10),
        source="test",
        levels={"gpu": gpu, "site": site_data},
        rollups=rollups,
        job_ids=np.array(list(j), dtype=np.int64),
        job_power_w=np.array([v[0] for v in j.values()]),
        job_coverage=np.ones(len(j)),
        job_energy_kwh=np.array([v[1] for v in j.values()]),
        job_cost=np.array([v[2] for v in j.values()]),
        gpu_energy_kwh=np.zeros(0) if energy is None else energy,
    )


def rows(store: HistoryStore, sql: str) -> list[tuple]:
    with store._reader() as con:
        return con.execute(sql).fetchall()


def test_one_second_rows_are_the_means_of_10hz_snapshots(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        for k in range(20):  # two seconds at 10 Hz; GPU power 100 + k W, site meter 1000 + k W
            store.submit(snap(topo, T0 + k / 10, 100.0 + k, temp=40.0 + k, site={"meter_power_w": 1000.0 + k}))
        assert store.flush()
        node = rows(
            store,
            "SELECT t_s, gpu_power_w, gpu_power_peak_w, gpu_power_max_w, gpu_temp_max_c, coverage "
            "FROM node_1s WHERE entity = 3 ORDER BY t_s",
        )
        assert node == [(T0, 8 * 104.5, 8 * 109.0, 109.0, 49.0, 1.0), (T0 + 1, 8 * 114.5, 8 * 119.0, 119.0, 59.0, 1.0)]
        site = rows(store, "SELECT t_s, gpu_power_w, meter_power_w FROM site_1s ORDER BY t_s")
        assert site == [(T0, 256 * 104.5, 1004.5), (T0 + 1, 256 * 114.5, 1014.5)]
        counts = rows(
            store,
            "SELECT (SELECT count(*) FROM node_1s), (SELECT count(*) FROM rack_1s), "
            "(SELECT count(*) FROM hall_1s), (SELECT count(*) FROM gpu_1m)",
        )
        assert counts == [(64, 16, 2, 256)]
        s = store.stats
        assert (s.submitted, s.written_snapshots, s.dropped, s.rejected) == (20, 20, 0, 0)
        assert s.rows_written["node_1s"] == 64 and s.last_write_s == T0 + 1


def test_flagged_values_are_excluded_and_coverage_counts_them(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        for k in range(120):  # two minutes at 1 Hz; GPU 0 missing in the odd seconds of the first minute
            bad = np.array([0]) if (k < 60 and k % 2) else None
            energy = np.full(256, 0.01 * k)
            energy[1] = np.nan if k >= 50 else energy[1]  # GPU 1's counter stops at 0.49 kWh
            store.submit(snap(topo, T0 + k, 200.0 + k % 60, temp=30.0 + (k % 60) / 2, bad=bad, energy=energy))
        store.flush()
        g = rows(
            store,
            "SELECT gpu, power_w_mean, power_w_max, temp_c_max, energy_kwh_last, coverage FROM gpu_1m "
            f"WHERE t_s = {T0} AND gpu < 3 ORDER BY gpu",
        )
        assert g[0] == pytest.approx((0, 200 + 29.0, 258.0, 59.0, 0.59, 0.5))  # even seconds only: mean 229
        assert g[1] == pytest.approx((1, 229.5, 259.0, 59.5, 0.49, 1.0))
        assert g[2] == pytest.approx((2, 229.5, 259.0, 59.5, 0.59, 1.0))
        node = rows(
            store, f"SELECT gpu_power_w, gpu_power_max_w, coverage FROM node_1s WHERE entity = 0 AND t_s = {T0 + 1}"
        )
        assert node == [pytest.approx((7 * 201.0, 201.0, 7 / 8))]
        assert rows(store, "SELECT count(*) FROM gpu_1m") == [(512,)]


def test_nan_is_stored_as_null(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        store.submit(snap(topo, T0, 100.0, temp=np.nan, site={"frequency_hz": np.nan}))
        store.flush()
        assert rows(store, "SELECT gpu_temp_max_c, frequency_hz FROM site_1s") == [(None, None)]
        assert rows(store, "SELECT count(*) FROM gpu_1m WHERE temp_c_mean IS NULL") == [(256,)]


def test_a_flush_inside_a_second_is_replaced_when_the_second_completes(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX, batch_s=0.0) as store:
        for k in range(5):
            store.submit(snap(topo, T0 + k / 10, 100.0 + k))
        store.flush()
        assert rows(store, "SELECT gpu_power_w FROM hall_1s") == [(256 * 102.0,)]
        for k in range(5, 21):
            store.submit(snap(topo, T0 + k / 10, 100.0 + k))
        deadline = time.monotonic() + 10
        while store.stats.written_snapshots < 21 and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer inserts finished seconds on its own (batch_s=0), no flush
        assert rows(store, "SELECT t_s, gpu_power_w FROM hall_1s ORDER BY t_s") == [
            (T0, 256 * 104.5),
            (T0 + 1, 256 * 114.5),
        ]
        # the minute is still open: its provisional rows stay until it is written again
        assert rows(store, "SELECT count(*), avg(power_w_mean) FROM gpu_1m") == [(256, 102.0)]
        store.flush()
        assert rows(store, "SELECT t_s, gpu_power_w FROM hall_1s ORDER BY t_s") == [
            (T0, 256 * 104.5),
            (T0 + 1, 256 * 114.5),
            (T0 + 2, 256 * 120.0),
        ]
        assert rows(store, "SELECT count(*), avg(power_w_mean) FROM gpu_1m") == [(256, 110.0)]


def test_nothing_holds_a_transaction_open_after_a_write(topo: Topology, tmp_path: Path) -> None:
    # An open transaction after an ALTER TABLE (a new site metric) stops DuckDB from checkpointing: the WAL grows.
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX, retention_every_s=0.0) as store:
        for k in range(3):
            store.submit(snap(topo, T0 + k, 100.0, site={"facility_power_w": 1.0}))
        store.flush()
        store.flush()
        with store._reader() as con:
            con.execute("CHECKPOINT")  # raises "other write transactions active" if one is left open


def test_jobs_per_second(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        for k in range(10):
            jobs = {7: (1000.0 + k, 0.5 + k, 0.1 * k)}
            if k < 4:
                jobs[9] = (200.0, 2.0, 1.0)
            store.submit(snap(topo, T0 + k / 10, 100.0, jobs=jobs))
        store.flush()
        got = rows(store, "SELECT job, power_w, energy_kwh, cost FROM job_1s ORDER BY job")
        assert got == [pytest.approx((7, 1004.5, 9.5, 0.9)), pytest.approx((9, 200.0, 2.0, 1.0))]


def test_series_resamples_and_resolves_names(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        for k in range(60):
            power = np.full(256, 100.0 + k)
            power[9] = 300.0  # GPU 9 sits on node 1, rack 0
            store.submit(snap(topo, T0 + k, power, site={"facility_power_w": float(k)}, jobs={42: (10.0 * k, k, 0.0)}))
        store.flush()
        s = store.series("site", "facility_power_w", T0, T0 + 60, 20)
        assert s["t_s"].tolist() == [T0, T0 + 20, T0 + 40] and s["value"].tolist() == [9.5, 29.5, 49.5]
        node = store.series(f"node:{topo.node_names[1]}", "gpu_power_max_w", T0, T0 + 60, 60)
        assert node["value"].tolist() == [300.0]
        peak = store.series(f"rack:{topo.rack_names[0]}", "gpu_power_peak_w", T0 + 10, T0 + 20, 5)
        assert peak["value"].tolist() == [31 * 114.0 + 300, 31 * 119.0 + 300]
        by_uuid = store.series(f"gpu:{topo.gpu_uuids[9]}", "power_w_mean", T0, T0 + 60, 60)
        assert by_uuid.equals(store.series("gpu:9", "power_w_mean", T0, T0 + 60, 60))
        assert by_uuid["value"].tolist() == [300.0]
        assert store.series("job:42", "energy_kwh", T0, T0 + 60, 30)["value"].tolist() == [29.0, 59.0]
        assert store.series(f"hall:{topo.hall_names[0]}", "coverage", T0, T0 + 60, 60)["value"].tolist() == [1.0]
        assert store.series("site", "gpu_power_w", T0 + 100, T0 + 200, 10).empty
        with pytest.raises(ValueError, match="valid forms"):
            store.series("pdu:1", "power_w", T0, T0 + 1, 1)
        with pytest.raises(ValueError, match=r"unknown rack 'nope'; valid: hall-1/r00/k00"):
            store.series("rack:nope", "gpu_power_w", T0, T0 + 1, 1)
        with pytest.raises(ValueError, match="valid: gpu_power_w"):
            store.series("site", "power", T0, T0 + 1, 1)


def test_retention_deletes_old_rows(topo: Topology, tmp_path: Path) -> None:
    keep = Retention(node_1s=10, rack_1s=30, site_1s=30, job_1s=5, gpu_1m=60)
    with HistoryStore(tmp_path / "h.duckdb", topo, retention=keep, queue_max=QMAX) as store:
        for k in range(180):
            store.submit(snap(topo, T0 + k, 100.0, jobs={1: (1.0, 1.0, 1.0)}))
        deleted = store.apply_retention()
        newest = T0 + 179
        assert rows(store, "SELECT min(t_s), count(*) FROM node_1s") == [(newest - 10, 11 * 32)]
        assert (
            rows(store, "SELECT min(t_s) FROM rack_1s UNION ALL SELECT min(t_s) FROM site_1s") == [(newest - 30,)] * 2
        )
        assert rows(store, "SELECT min(t_s) FROM job_1s UNION ALL SELECT min(t_s) FROM gpu_1m") == [
            (newest - 5,),
            (T0 + 120,),
        ]
        assert deleted["node_1s"] == (180 - 11) * 32 == store.stats.rows_deleted["node_1s"]
        assert rows(store, "SELECT min(t_s) FROM row_1s") == [(T0,)]  # 30 days by default


def test_the_writer_enforces_retention_on_its_own(topo: Topology, tmp_path: Path) -> None:
    keep = Retention(node_1s=5)
    with HistoryStore(tmp_path / "h.duckdb", topo, retention=keep, retention_every_s=0.0, queue_max=QMAX) as store:
        for k in range(20):
            store.submit(snap(topo, T0 + k, 100.0))
        store.flush()
        store.flush()  # the writer applies retention after the batch that answered the first flush
        assert rows(store, "SELECT min(t_s) FROM node_1s") == [(T0 + 14,)]
        assert store.stats.rows_deleted["node_1s"] == 14 * 32


def test_parquet_export_round_trip(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        for k in range(30):
            store.submit(snap(topo, T0 + k / 10, 100.0 + k))
        store.flush()
        n = store.export_parquet("rack_1s", tmp_path / "out" / "rack.parquet")
        part = store.export_parquet("rack_1s", tmp_path / "rack_part.parquet", start_s=T0 + 1, end_s=T0 + 2)
        names = store.export_parquet("entities", tmp_path / "entities.parquet")
        with pytest.raises(ValueError, match="valid: node_1s"):
            store.export_parquet("racks", tmp_path / "x.parquet")
    table = pq.read_table(tmp_path / "out" / "rack.parquet")
    assert n == table.num_rows == 24 and part == 8
    assert table.column("gpu_power_w").to_pylist()[:2] == [32 * 104.5, 32 * 104.5]
    assert str(table.schema.field("gpu_power_w").type) == "float" and str(table.schema.field("t_s").type) == "double"
    assert pq.read_table(tmp_path / "rack_part.parquet").column("t_s").to_pylist() == [T0 + 1] * 8
    assert names == 256 + 32 + 8 + 2 + 1 + 1
    assert not list(tmp_path.glob(".*partial*")) and not list((tmp_path / "out").glob(".*"))


def test_reopening_keeps_history_and_refuses_older_seconds(topo: Topology, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    with HistoryStore(path, topo, queue_max=QMAX) as store:
        for k in range(3):
            store.submit(snap(topo, T0 + k, 100.0))
    with HistoryStore(path, topo, queue_max=QMAX) as store:
        assert rows(store, "SELECT count(*) FROM site_1s") == [(3,)]
        store.submit(snap(topo, T0 + 1.5, 100.0))  # already written
        store.submit(snap(topo, T0 + 3, 200.0))
        store.submit(snap(topo, T0 + 2.5, 100.0))  # older than the open second
        store.flush()
        assert store.stats.out_of_order == 2
        assert store.series("site", "gpu_power_w", T0, T0 + 10, 1)["value"].tolist() == [256 * 100.0] * 3 + [
            256 * 200.0
        ]
    texas = Topology.from_site(load_scenario("texas")[0])
    with pytest.raises(ValueError, match="another topology"):
        HistoryStore(path, texas)


def test_submit_never_blocks_and_counts_drops(topo: Topology, tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.duckdb", topo, queue_max=4, autostart=False)  # a paused writer
    snaps = [snap(topo, T0 + k / 10, 100.0) for k in range(50)]
    t = time.perf_counter()
    accepted = [store.submit(s) for s in snaps]
    elapsed = time.perf_counter() - t
    assert accepted == [True] * 4 + [False] * 46
    assert elapsed < 0.05  # never waits for the writer
    assert (store.stats.dropped, store.stats.queue_depth) == (46, 4)
    store.start()
    assert store.flush()
    assert store.stats.written_snapshots == 4
    store.close()
    assert not store.submit(snaps[0]) and store.stats.dropped == 47


def test_a_snapshot_of_the_wrong_shape_is_rejected(topo: Topology, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.duckdb", topo, queue_max=QMAX) as store:
        bad = snap(topo, T0, 100.0)
        bad.levels["gpu"].values["power_w"] = np.zeros(255)
        store.submit(bad)
        store.submit(snap(topo, T0 + 1, 100.0))
        store.flush()
        s = store.stats
        assert s.rejected == 1 and "levels['gpu'].values['power_w'] has shape (255,), expected (256,)" in s.last_error
        assert rows(store, "SELECT t_s FROM site_1s") == [(T0 + 1,)]


def test_snapshots_from_the_twin_and_the_tracker(tmp_path: Path) -> None:
    from powerplane.telemetry.tracker import Tracker
    from powerplane.twin.twin import Twin

    site, path = load_scenario("small")
    twin = Twin(site, path, seed=0)
    with HistoryStore(tmp_path / "h.duckdb", twin.topo, queue_max=QMAX) as store:
        tracker = Tracker(twin.topo, site, history=store)
        snaps = []
        for _ in range(3):
            twin.advance(1)
            snaps.append(tracker.ingest(twin.read(), twin.workload.gpu_job))
        store.flush()
        s = snaps[-1]
        t = s.t_s
        assert store.stats.rejected == 0 and store.stats.written_snapshots == 3
        site_row = rows(store, f"SELECT facility_power_w, pue, gpu_power_w, rack_power_w FROM site_1s WHERE t_s = {t}")
        expected = (
            s.levels["site"].values["facility_power_w"][0],
            s.levels["site"].values["pue"][0],
            s.rollups["site"]["gpu.power_w"].sum[0],
            s.rollups["site"]["rack.power_w"].sum[0],
        )
        assert site_row == [pytest.approx(expected, rel=1e-6)]
        rack = rows(
            store, f"SELECT rack_power_w, node_power_w, inlet_temp_c FROM rack_1s WHERE t_s = {t} ORDER BY entity"
        )
        np.testing.assert_allclose(np.array(rack, dtype=float)[:, 0], s.levels["rack"].values["power_w"], rtol=1e-6)
        np.testing.assert_allclose(np.array(rack, dtype=float)[:, 1], s.rollups["rack"]["node.power_w"].sum, rtol=1e-6)
        hall = rows(store, f"SELECT it_power_w FROM hall_1s WHERE t_s = {t}")
        assert hall == [pytest.approx((s.levels["hall"].values["it_power_w"][0],), rel=1e-6)]
        assert rows(store, f"SELECT count(*) FROM job_1s WHERE t_s = {t}") == [(s.job_ids.size,)]
