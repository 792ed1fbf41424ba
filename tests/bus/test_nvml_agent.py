"""An agent on a real node's NVML (a fake NVML here, never a real card's settings): frames and power caps."""

from __future__ import annotations

import time

import numpy as np

from powerplane.bus.agent import Agent
from powerplane.bus.server import NatsServer
from powerplane.bus.source import BusActuator, BusSource
from powerplane.bus.tracker import Tracker
from powerplane.config.loader import load_scenario
from powerplane.core.clock import WallClock
from powerplane.core.commands import GpuPowerCap
from powerplane.sources.fake_nvml import FakeNvml
from powerplane.sources.nvml import NvmlSource
from powerplane.sources.nvml_caps import NvmlPowerCapper
from powerplane.topology import Topology

from .helpers import LoopThread


def test_nvml_agent_publishes_and_applies_caps_within_the_cards_limits(nats_server: NatsServer) -> None:
    site, _ = load_scenario("small")
    topo = Topology.from_site(site)
    node = topo.node_names[5]
    nv = FakeNvml.demo(WallClock())
    src = NvmlSource(hostname=node, nvml=nv)
    capper = NvmlPowerCapper(nvml=nv)
    url = nats_server.url
    agent = Agent(url, topo, src, node_map=np.array([5]), actuator=capper, rate_hz=5.0)
    tracker = Tracker(url, topo, tick_s=0.2)
    loop = LoopThread()
    bus_src = BusSource(url, site, topo)
    act = BusActuator(url, site, topo)
    try:
        t_fut = loop.spawn(tracker.run(duration_s=5.0))
        a_fut = loop.spawn(agent.run(duration_s=3.0))
        deadline = time.monotonic() + 15
        while bus_src.frames < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        frame = bus_src.read()
        gpus = np.flatnonzero(topo.gpu_node == 5)
        assert frame.levels["gpu"]["_reported"][gpus].all()
        assert frame.levels["gpu"]["_reported"].sum() == 8  # only this node is on the bus
        assert np.isfinite(frame.levels["gpu"]["power_w"][gpus]).all()
        res = act.apply([GpuPowerCap(gpus[:2], np.array([450.0, 5000.0]))])[0]
        assert res.applied and res.clipped
        assert [g.limit_w for g in nv.gpus[:2]] == [450.0, 700.0]  # clipped to the H100's 700 W maximum
        a_fut.result(20)
        t_fut.result(20)
    finally:
        act.link.close()
        bus_src.close()
        loop.close()
        capper.close()  # restores the limits it changed
        src.close()
    assert [g.limit_w for g in nv.gpus[:2]] == [700.0, 700.0]
    assert agent.stats.commands["applied"] == 1
