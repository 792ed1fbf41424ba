"""`run_site_over_bus`: the site's agents and trackers as processes, a local nats-server, the runtime's side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerplane.bus.wiring import run_site_over_bus
from powerplane.core.commands import GpuPowerCap
from powerplane.telemetry.tracker import Tracker


@pytest.mark.slow
def test_run_site_over_bus_end_to_end(tmp_path: Path) -> None:
    bus = run_site_over_bus(None, "small", agents=2, trackers=2, rate_hz=5.0, log_dir=tmp_path)
    try:
        bus.wait_ready(60)
        frame = bus.source.read()
        snap = Tracker(bus.topology, bus.site).ingest(frame)
        assert snap.rollups["site"]["gpu.power_w"].coverage[0] > 0.9
        assert np.isfinite(frame.levels["site"]["meter_power_w"]).all()
        res = bus.actuator.apply([GpuPowerCap(np.arange(bus.topology.n_gpus - 8, bus.topology.n_gpus), 400.0)])
        assert res[0].applied, res[0].detail  # the second agent owns the last node
    finally:
        bus.close()
    assert all(p.poll() is not None for p in bus.processes.values())
    assert (tmp_path / "bus_audit.jsonl").read_text().count("gpu_power_cap") == 1
