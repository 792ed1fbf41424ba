"""Agents, trackers, BusSource and BusActuator against a real nats-server on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import numpy as np
import pytest

from powerplane.bus import codec, subjects
from powerplane.bus.server import BusError, NatsServer
from powerplane.bus.source import BusActuator, BusSource
from powerplane.bus.tracker import Tracker
from powerplane.bus.verify import audit_rollups
from powerplane.core.commands import BessSetpoint, GpuPowerCap, PauseJob
from powerplane.telemetry.snapshot import Quality
from powerplane.telemetry.tracker import Tracker as TelemetryTracker

from .helpers import LoopThread, expected_of, twin_agent


def test_agent_tracker_source_actuator_end_to_end(nats_server: NatsServer) -> None:
    url = nats_server.url
    agent, twin = twin_agent(url)
    site, topo = twin.site, twin.topo
    tracker = Tracker(url, topo)
    loop = LoopThread()
    try:
        t_fut = loop.spawn(tracker.run(duration_s=6.0))
        a_fut = loop.spawn(agent.run(duration_s=3.0))
        src = BusSource(url, site, topo)
        act = BusActuator(url, site, topo, timeout_s=2.0)
        try:
            deadline = time.monotonic() + 10
            while src.frames < topo.n_nodes * 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            frame = src.read()
            assert frame.levels["gpu"]["power_w"].shape == (topo.n_gpus,)
            assert frame.levels["gpu"]["_reported"].all()
            assert {"rack", "hall", "site", "bess"} <= set(frame.levels)
            snap = TelemetryTracker(topo, site).ingest(frame)  # the runtime's telemetry takes it unchanged
            assert (snap.levels["gpu"].quality["power_w"] == Quality.OK).all()
            assert snap.rollups["site"]["gpu.power_w"].coverage[0] == 1.0
            # Commands: GPU caps split per node, applied by the agent to its twin, clipped to the card's limits.
            res = act.apply([GpuPowerCap(np.array([0, 1, 9]), 300.0), BessSetpoint(0, 40e3), PauseJob(0)])
            assert res[0].applied and res[0].detail.startswith("2 nodes")
            assert twin.fleet.cap_w[[0, 1, 9]].tolist() == [300.0, 300.0, 300.0]
            assert res[1].applied and twin.plant.bess_setpoint_w[0] == 40e3
            assert not res[2].applied and "not carried" in res[2].detail
            assert not act.apply([BessSetpoint(7, 1.0)])[0].applied  # unknown unit, refused before the bus
            huge = act.apply([GpuPowerCap(np.array([2]), 5000.0)])[0]
            assert huge.applied and huge.clipped and twin.fleet.cap_w[2] < 5000.0  # never above the card's limit
            assert len(act.audit) == 5
        finally:
            src_lat = np.array(src.latency_s)
            act.link.close()
            src.close()
        a_fut.result(20)
        stats = t_fut.result(20)
    finally:
        loop.close()
    hall = stats["halls"][topo.hall_names[0]]
    assert hall["rejected"] == {} and hall["frames_accepted"] == agent.stats.frames_produced
    audit = asyncio.run(audit_rollups(url, topo))
    result = audit.compare(expected_of(agent))
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["expected"] == 30 * topo.n_nodes
    assert 0 < np.median(src_lat) < 5.0  # sanity only: frames flow through (speed is for the benchmark)


def test_bad_frames_on_the_bus_are_rejected_and_counted(nats_server: NatsServer) -> None:
    url = nats_server.url
    agent, twin = twin_agent(url)
    topo = twin.topo
    tracker = Tracker(url, topo)

    async def scenario() -> dict[str, object]:
        task = asyncio.create_task(tracker.run(duration_s=4.0))
        await agent.run(max_ticks=5)
        nc = await nats.connect(url)
        js = nc.jetstream()
        subject = subjects.tel_subject(topo.site_name, topo.hall_names[0], topo.rack_names[0], topo.node_names[0])
        good = agent.encoders[0].encode(twin.read(), agent.stats.last_seq, 0.0)[0][1]
        frame = np.frombuffer(good, dtype=agent.encoders[0].dtype)[:1].copy()
        await js.publish(subject, frame.tobytes())  # a replay of the last frame: duplicate
        wrong = frame.copy()
        wrong["version"] = 3
        await js.publish(subject, wrong.tobytes())
        stranger = frame.copy()
        stranger["node"] = topo.n_nodes + 100
        stranger["seq"] = stranger["seq"] + 1
        await js.publish(subject, stranger.tobytes())
        await js.publish(subject, b"not a frame")
        await nc.close()
        return await task

    stats = asyncio.run(scenario())
    hall = stats["halls"][topo.hall_names[0]]  # type: ignore[index]
    assert hall["rejected"] == {"duplicate": 1, "schema_version": 1, "unknown_node": 1, "malformed": 1}
    assert hall["frames_accepted"] == 5 * topo.n_nodes


def test_agent_refuses_bad_commands_and_unreachable_bus_is_a_clear_error(nats_server: NatsServer) -> None:
    url = nats_server.url
    agent, twin = twin_agent(url)
    topo = twin.topo

    async def scenario() -> list[dict[str, object]]:
        task = asyncio.create_task(agent.run(duration_s=2.0))
        await asyncio.sleep(0.5)
        nc = await nats.connect(url)
        node = topo.node_names[0]
        subject = subjects.cmd_subject(topo.site_name, topo.hall_names[0], node)
        out = []
        bodies = (
            b"{",
            b'{"v": 2, "kind": "gpu_power_cap"}',
            b'{"v": 1, "kind": "gpu_power_cap", "gpus": [99], "cap_w": 1}',
        )
        for body in bodies:
            out.append(json.loads((await nc.request(subject, body, timeout=2)).data))
        await nc.close()
        await task
        return out

    replies = asyncio.run(scenario())
    assert all(not r["applied"] and "bad command" in str(r["detail"]) for r in replies)
    assert agent.stats.commands["rejected"] == 3
    with pytest.raises(BusError, match="cannot connect"):
        asyncio.run(twin_agent("nats://127.0.0.1:1", wait_for_bus_s=0.0)[0].run(max_ticks=1))


def test_codec_versions_are_checked_by_the_source(nats_server: NatsServer) -> None:
    _, twin = twin_agent(nats_server.url)
    src = BusSource(nats_server.url, twin.site, twin.topo, first_timeout_s=0.5)
    try:
        with pytest.raises(Exception, match="no rollup"):
            src.read()

        async def junk() -> None:
            nc = await nats.connect(nats_server.url)
            await nc.publish(subjects.rollup_subject(twin.topo.site_name, "hall-1"), b"PPHR" + bytes(80))
            await nc.publish(subjects.plant_subject(twin.topo.site_name), codec.MAGIC_PLANT + bytes(4))
            await nc.flush()
            await nc.close()

        asyncio.run(junk())
        time.sleep(0.3)
        assert sum(src.rejected.values()) == 2
    finally:
        src.close()
