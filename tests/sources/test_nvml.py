"""NVML source and power-cap actuator, against the fake NVML (never a real GPU's settings)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerplane.core.clock import SimClock
from powerplane.core.commands import GpuPowerCap, PauseJob
from powerplane.core.errors import ActuatorError, SourceError
from powerplane.physics.gpu_power import GPU_PROFILES
from powerplane.sources.base import Source
from powerplane.sources.fake_nvml import FakeGpu, FakeNvml, default_gpus, training_load
from powerplane.sources.nvml import NvmlSource, error_name, gpu_model
from powerplane.sources.nvml_caps import NvmlPowerCapper


def make(gpus: list[FakeGpu] | None = None) -> tuple[FakeNvml, NvmlSource]:
    nv = FakeNvml(gpus)
    return nv, NvmlSource(hostname="node-a", nvml=nv, clock=nv.clock)


# ---------------------------------------------------------------------------------------------- model names


@pytest.mark.parametrize(
    ("name", "model", "exact"),
    [
        ("NVIDIA H100 80GB HBM3", "H100", True),
        ("NVIDIA H100 PCIe", "H100", True),
        ("NVIDIA H800", "H100", True),
        ("NVIDIA H200", "H200", True),
        ("NVIDIA H200 NVL", "H200", True),
        ("NVIDIA GH200 480GB", "H200", True),
        ("NVIDIA H20", "H100", True),
        ("NVIDIA B200", "B200", True),
        ("NVIDIA GB200", "B200", True),
        ("NVIDIA A100-SXM4-80GB", "H100", False),
        ("Tesla V100-SXM2-32GB", "H100", False),
    ],
)
def test_gpu_model_maps_nvml_names_to_profiles(name: str, model: str, exact: bool) -> None:
    assert gpu_model(name) == (model, exact)
    assert model in GPU_PROFILES


# ---------------------------------------------------------------------------------------------- source


def test_topology_is_one_node_of_the_devices() -> None:
    gpus = [FakeGpu(name="NVIDIA H100 80GB HBM3"), FakeGpu(name="NVIDIA H200"), FakeGpu(name="NVIDIA A100 80GB")]
    nv, src = make(gpus)
    topo = src.topology
    assert isinstance(src, Source)
    assert (topo.n_gpus, topo.n_nodes, topo.n_racks, topo.n_halls) == (3, 1, 1, 1)
    assert topo.site_name == "local" and topo.hall_names == ["local"] and topo.node_names == ["node-a"]
    assert topo.gpu_uuids == [g.uuid for g in nv.gpus]
    assert [topo.gpu_models[i] for i in topo.gpu_model_idx] == ["H100", "H200", "H100"]
    assert src.device_names[2] == "NVIDIA A100 80GB" and src.model_exact == [True, True, False]
    assert topo.gpu_local_index.tolist() == [0, 1, 2]
    # busbar limit of the lone node: its maximum draw with every GPU at its maximum power limit
    assert topo.hall_busbar_limit_w[0] == pytest.approx(1500.0 + 3 * 700.0 * 1.45)
    assert topo.rollup_sum(np.ones(3), "gpu", "node").tolist() == [3.0]


def test_read_converts_units_and_reads_every_metric() -> None:
    _, src = make([FakeGpu(load=1.0), FakeGpu(load=0.0), FakeGpu(load=1.0, limit_w=400.0)])
    f = src.read()
    g = f.levels["gpu"]
    assert f.source == "nvml" and f.t_s == 0.0
    assert g["power_w"].tolist() == [590.0, 70.0, 400.0]
    assert g["energy_mj"].tolist() == [0.0, 0.0, 0.0]
    assert g["util_pct"].tolist() == [100.0, 0.0, 100.0]
    assert g["mem_util_pct"].tolist() == [70.0, 0.0, 70.0]
    assert g["power_cap_w"].tolist() == [700.0, 700.0, 400.0]
    assert g["temp_c"].tolist() == [70.0, 35.0, round(35 + 35 * 330 / 520)]
    assert (g["mem_temp_c"] - g["temp_c"]).tolist() == [6.0, 6.0, 6.0]
    assert g["sm_clock_mhz"][0] == 1980.0 and g["sm_clock_mhz"][2] == 1590.0  # capped: pulled to base clock
    assert g["throttle_reasons"].tolist() == [0.0, 1.0, 4.0]  # idle; SW power cap
    assert g["last_xid"].tolist() == [0, 0, 0]
    assert set(g) == {
        "power_w",
        "energy_mj",
        "util_pct",
        "mem_util_pct",
        "sm_clock_mhz",
        "temp_c",
        "mem_temp_c",
        "power_cap_w",
        "throttle_reasons",
        "last_xid",
    }
    assert not src.errors


def test_energy_counter_advances_with_the_injected_clock() -> None:
    clock = SimClock(1000.0)
    nv = FakeNvml([FakeGpu(load=1.0), FakeGpu(load=0.5)], clock)
    src = NvmlSource("n", nv, clock)
    e0 = src.read().levels["gpu"]["energy_mj"]
    clock.advance(10.0)
    f = src.read()
    assert f.t_s == 1010.0
    np.testing.assert_array_equal(f.levels["gpu"]["energy_mj"] - e0, [590.0 * 10 * 1e3, 330.0 * 10 * 1e3])


def test_unsupported_energy_is_nan_counted_once_and_not_asked_again() -> None:
    gpus = [FakeGpu(load=0.5), FakeGpu(load=0.5, energy_supported=False, mem_temp_offset_c=None)]
    nv, src = make(gpus)
    for _ in range(3):
        g = src.read().levels["gpu"]
        nv.advance(1.0)
    assert np.isfinite(g["energy_mj"][0]) and np.isnan(g["energy_mj"][1])
    assert np.isnan(g["mem_temp_c"][1]) and np.isfinite(g["mem_temp_c"][0])
    assert np.isfinite(g["power_w"]).all()
    assert src.errors == {"NOT_SUPPORTED": 2}  # energy and memory temperature, each asked once
    assert src.unsupported == {(1, "energy"), (1, "mem_temp")}


def test_a_gpu_that_falls_off_the_bus_goes_nan_and_is_not_polled_again() -> None:
    nv, src = make(default_gpus(4, load=0.8))  # GPU 3 is lost at t = 60 s, GPU 2 has no energy counter
    assert np.isfinite(src.read().levels["gpu"]["power_w"]).all()
    nv.advance(60.0)
    g = src.read().levels["gpu"]
    for metric in ("power_w", "energy_mj", "temp_c", "power_cap_w", "throttle_reasons"):
        assert np.isnan(g[metric][3]), metric
    assert np.isfinite(g["power_w"][:3]).all()
    assert src.lost == {3} and src.errors["GPU_IS_LOST"] == 1
    src.read()
    assert src.errors["GPU_IS_LOST"] == 2  # one per read, without calling NVML on it


def test_a_gpu_lost_before_start_keeps_its_slot() -> None:
    nv, src = make([FakeGpu(load=1.0), FakeGpu(lost_at_s=-math.inf), FakeGpu(load=1.0)])
    assert src.topology.n_gpus == 3
    assert src.topology.gpu_uuids[1] == "GPU-unavailable-nvml-index-1"
    assert src.topology.gpu_uuids[2] == nv.gpus[2].uuid
    p = src.read().levels["gpu"]["power_w"]
    assert p[0] == 590.0 and np.isnan(p[1]) and p[2] == 590.0


def test_init_failures_are_source_errors_and_release_nvml() -> None:
    with pytest.raises(SourceError, match="NVML not available: driver not loaded"):
        NvmlSource(nvml=FakeNvml(driver_loaded=False))
    nv = FakeNvml([])
    with pytest.raises(SourceError, match="no GPUs"):
        NvmlSource(nvml=nv)
    assert nv.init_count == 0


def test_real_pynvml_without_a_driver_is_a_source_error() -> None:
    """Read-only: on a machine with NVIDIA GPUs this opens the real NVML and only reads it."""
    try:
        src = NvmlSource()
    except SourceError as exc:
        assert str(exc).startswith("NVML not available")
        return
    with src:
        assert src.read().levels["gpu"]["power_w"].size == src.topology.n_gpus


def test_close_is_idempotent_and_read_after_close_fails() -> None:
    nv, src = make([FakeGpu()])
    with src:
        assert nv.init_count == 1
    src.close()
    assert nv.init_count == 0
    with pytest.raises(SourceError, match="closed"):
        src.read()


def test_error_names_come_from_the_module_constants() -> None:
    import pynvml

    nv = FakeNvml([FakeGpu()])
    assert error_name(nv, nv.NVMLError(15)) == "GPU_IS_LOST"
    assert error_name(pynvml, pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)) == "NOT_SUPPORTED"
    # the fake uses pynvml's numbers
    for name in ("NOT_SUPPORTED", "GPU_IS_LOST", "NO_PERMISSION", "DRIVER_NOT_LOADED", "INVALID_ARGUMENT"):
        assert getattr(nv, f"NVML_ERROR_{name}") == getattr(pynvml, f"NVML_ERROR_{name}")
    assert nv.NVML_FI_DEV_MEMORY_TEMP == pynvml.NVML_FI_DEV_MEMORY_TEMP
    assert nv.NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM


def test_training_load_swings_power_in_step() -> None:
    nv, src = make([FakeGpu(load=training_load(10.0, 0.7)) for _ in range(2)])
    busy = src.read().levels["gpu"]["power_w"]
    nv.advance(8.0)
    idle = src.read().levels["gpu"]["power_w"]
    assert busy.tolist() == [70 + 0.95 * 520] * 2 and idle.tolist() == [70 + 0.1 * 520] * 2


# ---------------------------------------------------------------------------------------------- power caps


def test_caps_are_clipped_to_the_device_constraints_and_restored() -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu(), FakeGpu(limit_w=600.0)])
    with NvmlPowerCapper(nvml=nv) as capper:
        assert capper.limits_w(0) == (200.0, 700.0)
        out = capper.set_caps([0, 1, 2], [100.0, 450.4, 5000.0])
        assert out == [(0, 200.0, True), (1, 450.4, False), (2, 700.0, True)]
        assert [g.limit_w for g in nv.gpus] == [200.0, 450.4, 700.0]
        capper.set_caps([2], 300.0)
        assert capper.original_mw == {0: 700_000, 1: 700_000, 2: 600_000}  # the first limit, not the last
    assert [g.limit_w for g in nv.gpus] == [700.0, 700.0, 600.0]
    assert nv.init_count == 0


def test_nan_cap_means_the_default_limit() -> None:
    nv = FakeNvml([FakeGpu(limit_w=500.0, default_limit_w=650.0)])
    with NvmlPowerCapper(nvml=nv) as capper:
        assert capper.set_caps([0], math.nan) == [(0, 650.0, False)]
    assert nv.gpus[0].limit_w == 500.0


def test_capping_lowers_power_and_energy_rate() -> None:
    nv, src = make([FakeGpu(load=1.0)])
    with NvmlPowerCapper(nvml=nv) as capper:
        capper.set_caps([0], 400.0)
        e0 = src.read().levels["gpu"]["energy_mj"][0]
        nv.advance(5.0)
        g = src.read().levels["gpu"]
        assert g["power_w"][0] == 400.0 and g["power_cap_w"][0] == 400.0
        assert g["energy_mj"][0] - e0 == 400.0 * 5 * 1e3
        assert g["throttle_reasons"][0] == 4.0


def test_without_root_nothing_is_applied() -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu()], root=False)
    with NvmlPowerCapper(nvml=nv) as capper, pytest.raises(ActuatorError, match="needs root"):
        capper.set_caps([0, 1], 400.0)
    assert nv.set_calls == []


def test_a_refused_gpu_is_nan_and_the_rest_are_capped() -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu(lost_at_s=-math.inf), FakeGpu()])
    with NvmlPowerCapper(nvml=nv) as capper:
        out = capper.set_caps([0, 1, 2], 450.0)
        assert out[0] == (0, 450.0, False) and out[2] == (2, 450.0, False)
        assert out[1][0] == 1 and math.isnan(out[1][1])
        assert capper.failures == {1: "GPU_IS_LOST"} and 1 not in capper.original_mw


def test_bad_requests_change_nothing() -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu()])
    with NvmlPowerCapper(nvml=nv) as capper:
        with pytest.raises(ActuatorError, match="out of range"):
            capper.set_caps([0, 2], 400.0)
        with pytest.raises(ActuatorError, match="3 caps given for 2 GPUs"):
            capper.set_caps([0, 1], [400.0, 400.0, 400.0])
    assert nv.set_calls == []


def test_apply_handles_power_cap_commands() -> None:
    nv = FakeNvml([FakeGpu(), FakeGpu()])
    with NvmlPowerCapper(nvml=nv) as capper:
        ok, other = capper.apply([GpuPowerCap(np.array([0, 1]), 900.0), PauseJob(3)])
        assert ok.applied and ok.clipped and "700-700 W" in ok.detail
        assert not other.applied and "unsupported" in other.detail


def test_init_failure_is_an_actuator_error() -> None:
    with pytest.raises(ActuatorError, match="driver not loaded"):
        NvmlPowerCapper(nvml=FakeNvml(driver_loaded=False))


@settings(max_examples=60, deadline=None)
@given(
    caps=st.lists(st.floats(-1e6, 1e6) | st.sampled_from([math.nan, math.inf, -math.inf]), min_size=1, max_size=6),
    lo=st.floats(100.0, 400.0),
    span=st.floats(0.0, 800.0),
)
def test_never_writes_outside_the_device_limits(caps: list[float], lo: float, span: float) -> None:
    gpus = [FakeGpu(min_limit_w=lo, max_limit_w=lo + span, default_limit_w=lo + span) for _ in caps]
    nv = FakeNvml(gpus)
    with NvmlPowerCapper(nvml=nv) as capper:
        out = capper.set_caps(range(len(caps)), caps)
        lo_mw, hi_mw = round(lo * 1e3), round((lo + span) * 1e3)
        assert all(lo_mw <= mw <= hi_mw for _, mw in nv.set_calls)
        assert all(lo_mw / 1e3 <= w <= hi_mw / 1e3 for _, w, _ in out)
    assert [g.limit_w for g in nv.gpus] == [round((lo + span) * 1e3) / 1e3] * len(caps)
