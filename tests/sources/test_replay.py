"""Replay of a simulate run: round trip against the Parquet tables, pacing, looping, bad directories; and the
Source protocol across twin, replay and NVML sources."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from powerplane.config.loader import load_scenario
from powerplane.core.clock import SimClock
from powerplane.core.errors import SourceError
from powerplane.runtime.simulate import SimulateOptions, simulate
from powerplane.sources.base import Source, TwinSource
from powerplane.sources.fake_nvml import FakeNvml
from powerplane.sources.nvml import NvmlSource
from powerplane.sources.replay import ReplayFinished, ReplaySource
from powerplane.twin.twin import Twin


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "run"
    simulate(SimulateOptions("small", 0.05, out=out, gpu_detail=True))  # 180 steps of 1 s, 3 intervals of 60 s
    return out


def table(run: Path, name: str) -> dict[str, np.ndarray]:
    t = pq.read_table(str(run / f"{name}.parquet"))
    return {c: t.column(c).to_numpy() for c in t.column_names if c not in ("rack", "hall", "unit")}


def test_round_trip_matches_the_tables(run: Path) -> None:
    site, gpus, racks = table(run, "site"), table(run, "gpus"), table(run, "racks")
    src = ReplaySource(run, speed=0)
    frames = list(src.frames())
    topo = src.topology
    assert len(frames) == len(src) == site["t_s"].size == 180
    assert topo.n_gpus == 256 and topo.n_racks == 8
    t = np.array([f.t_s for f in frames])
    np.testing.assert_array_equal(t, site["t_s"] + 1.0)  # stamped at the end of each step, like Twin.read
    for name, col in (("meter_power_w", "grid_power_w"), ("facility_power_w", "facility_power_w")):
        got = np.array([f.levels["site"][name][0] for f in frames])
        np.testing.assert_array_equal(got, site[col])
    halls = table(run, "halls")["it_power_w"]
    np.testing.assert_array_equal([f.levels["hall"]["it_power_w"][0] for f in frames], halls)

    starts = np.unique(racks["t_s"])
    gpu_power = gpus["power_w"].reshape(3, 256)
    rack_power = racks["power_w"].reshape(3, 8)
    for i, f in enumerate(frames):
        g, r = f.levels["gpu"], f.levels["rack"]
        done = np.flatnonzero(starts + 60.0 <= f.t_s)  # intervals over by this frame's time
        if done.size == 0:
            assert np.isnan(g["power_w"]).all() and np.isnan(r["power_w"]).all(), i
            continue
        k = done[-1]
        np.testing.assert_array_equal(g["power_w"], gpu_power[k].astype(np.float64))
        np.testing.assert_array_equal(g["energy_mj"], gpus["energy_mj"].reshape(3, 256)[k])
        np.testing.assert_array_equal(r["power_w"], rack_power[k].astype(np.float64))
    # the first interval [t0, t0 + 60) shows from the frame stamped t0 + 60 (its 60th step) on
    assert np.isnan(frames[58].levels["gpu"]["power_w"]).all()
    assert np.isfinite(frames[59].levels["gpu"]["power_w"]).all()
    assert np.isfinite(frames[-1].levels["gpu"]["util_pct"]).all()  # the last interval is shown at the end
    with pytest.raises(ReplayFinished):
        src.read()


def test_gpus_are_read_by_row_group(run: Path, tmp_path: Path) -> None:
    """Intervals that straddle small row groups come back whole and equal to a single-group file's."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    pq.write_table(pq.read_table(str(run / "gpus.parquet")), str(copy / "gpus.parquet"), row_group_size=100)
    assert pq.ParquetFile(str(copy / "gpus.parquet")).num_row_groups == 8
    a, b = ReplaySource(run, speed=0), ReplaySource(copy, speed=0)
    for fa, fb in zip(a.frames(), b.frames(), strict=True):
        for m, v in fa.levels["gpu"].items():
            np.testing.assert_array_equal(v, fb.levels["gpu"][m])


def test_frames_are_copies(run: Path) -> None:
    src = ReplaySource(run, speed=0)
    a = src.read()
    a.levels["site"]["it_power_w"][0] = -1.0
    src.reset()
    assert src.read().levels["site"]["it_power_w"][0] != -1.0


class FakeWall:
    """A wall clock that only moves when the replay sleeps."""

    def __init__(self) -> None:
        self.clock = SimClock(5000.0)
        self.sleeps: list[float] = []

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.clock.advance(dt)


def test_speed_paces_frames_with_the_injected_sleep(run: Path) -> None:
    wall = FakeWall()
    src = ReplaySource(run, speed=10.0, clock=wall.clock, sleep=wall.sleep)
    got: list[float] = []
    assert src.run(lambda f: got.append(f.t_s), max_frames=21) == 21
    assert len(wall.sleeps) == 20 and wall.sleeps == pytest.approx([0.1] * 20)
    assert wall.clock.now_s() - 5000.0 == pytest.approx((got[-1] - got[0]) / 10.0)
    # a slow consumer is not slowed down further: no sleep when already behind
    wall2 = FakeWall()
    src2 = ReplaySource(run, speed=10.0, clock=wall2.clock, sleep=wall2.sleep)
    for _ in src2.frames(max_frames=5):
        wall2.clock.advance(1.0)
    assert wall2.sleeps == []


@pytest.mark.parametrize("speed", [0.0, math.inf])
def test_speed_zero_or_inf_never_sleeps(run: Path, speed: float) -> None:
    wall = FakeWall()
    src = ReplaySource(run, speed=speed, clock=wall.clock, sleep=wall.sleep)
    assert sum(1 for _ in src) == 180 and wall.sleeps == []
    with pytest.raises(ValueError, match="speed"):
        ReplaySource(run, speed=-1.0)


def test_loop_starts_over_with_time_running_on(run: Path) -> None:
    src = ReplaySource(run, speed=0, loop=True)
    frames = list(src.frames(max_frames=2 * len(src) + 1))
    t = np.array([f.t_s for f in frames])
    assert np.all(np.diff(t) == 1.0)
    np.testing.assert_array_equal(frames[180].levels["site"]["it_power_w"], frames[0].levels["site"]["it_power_w"])


def test_a_run_without_gpu_detail_gives_nan_gpus(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "gpus.parquet").unlink()
    src = ReplaySource(copy, speed=0)
    frames = list(src.frames())
    assert all(np.isnan(f.levels["gpu"]["power_w"]).all() for f in frames)
    assert frames[-1].levels["gpu"]["power_w"].shape == (256,)
    assert np.isfinite(frames[-1].levels["rack"]["power_w"]).all()


def test_bad_directories_name_what_is_wrong(run: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such directory"):
        ReplaySource(tmp_path / "absent")
    with pytest.raises(SourceError, match=r"not a simulate output directory: summary\.json is missing"):
        ReplaySource(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "site.parquet").unlink()
    with pytest.raises(SourceError, match=r"site\.parquet is missing"):
        ReplaySource(copy)
    shutil.copy(run / "site.parquet", copy / "site.parquet")
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "scenario": "atlantis"}))
    with pytest.raises(SourceError, match="scenario 'atlantis' cannot be loaded"):
        ReplaySource(copy)
    (copy / "summary.json").write_text("{not json")
    with pytest.raises(SourceError, match="not readable JSON"):
        ReplaySource(copy)
    (copy / "summary.json").write_text(json.dumps(summary))
    pq.write_table(pq.read_table(str(run / "gpus.parquet")).slice(0, 300), str(copy / "gpus.parquet"))
    with pytest.raises(SourceError, match=r"gpus\.parquet: 300 rows, expected 3 intervals x 256 GPUs"):
        ReplaySource(copy)


def test_every_source_is_a_source(run: Path) -> None:
    site, path = load_scenario("small")
    twin_src = TwinSource(Twin(site, path), steps_per_read=3)
    t0 = twin_src.twin.now_s
    frame = twin_src.read()
    assert frame.t_s == t0 + 3.0 and frame.levels["gpu"]["power_w"].shape == (256,)
    nvml_src = NvmlSource("n", FakeNvml())
    for src in (twin_src, ReplaySource(run), nvml_src):
        assert isinstance(src, Source)
        assert src.read().source == src.name
        src.close()
    with pytest.raises(ValueError, match="steps_per_read"):
        TwinSource(Twin(site, path), steps_per_read=0)
