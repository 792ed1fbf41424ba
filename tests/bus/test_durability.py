"""Durability against real processes: SIGKILL a tracker under load, restart nats-server under load.

Trackers run as `powerplane tracker` subprocesses; the agent runs in the test's background loop. Afterwards every
hall rollup on the bus is read back and every node frame counted: none lost, none twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from powerplane.bus import codec, subjects
from powerplane.bus.server import NatsServer
from powerplane.bus.tracker import Tracker
from powerplane.bus.verify import audit_rollups

from .helpers import LoopThread, expected_of, twin_agent

POWERPLANE = str(Path(sys.executable).parent / "powerplane")


def start_tracker(url: str, ident: str, tmp: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            POWERPLANE,
            "tracker",
            "--url",
            url,
            "--scenario",
            "small",
            "--ident",
            ident,
            "-v",
            "--stats",
            str(tmp / f"{ident}.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"{ident}.log", "wb"),
    )


async def watch_rollups(url: str, site: str, seen: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """(receive time, tracker epoch) of every rollup, as the site runtime would see them."""
    nc = await nats.connect(url)

    async def cb(msg: nats.aio.msg.Msg) -> None:
        seen.append((time.monotonic(), codec.HallRollup.decode(msg.data).epoch))

    await nc.subscribe(f"pp.rollup.{subjects.token(site)}.>", cb=cb)
    await stop.wait()
    await nc.close()


@pytest.mark.slow
def test_kill_9_tracker_under_load_fails_over_within_5_s_and_loses_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    url = nats_server.url
    agent, twin = twin_agent(url)
    topo = twin.topo
    procs = {name: start_tracker(url, name, tmp_path) for name in ("tr-a", "tr-b")}
    loop = LoopThread()
    seen: list[tuple[float, int]] = []
    stop = asyncio.Event()
    try:
        watch = loop.spawn(watch_rollups(url, topo.site_name, seen, stop))
        fut = loop.spawn(agent.run(duration_s=60.0))
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen, "no rollup within 20 s"
        time.sleep(2.0)

        async def leader() -> str:
            nc = await nats.connect(url)
            kv = await nc.jetstream().key_value(subjects.lease_bucket(topo.site_name))
            entry = await kv.get(subjects.token(topo.hall_names[0]))
            await nc.close()
            return (entry.value or b"").decode()

        victim = loop.spawn(leader()).result(10)
        epoch_before = seen[-1][1]
        killed_at = time.monotonic()
        os.kill(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait()
        while time.monotonic() < killed_at + 10 and not any(e != epoch_before for _, e in seen[-5:]):
            time.sleep(0.05)
        time.sleep(1.0)  # a second of load on the survivor
        loop.loop.call_soon_threadsafe(agent.stop)
        fut.result(30)
        time.sleep(3.0)  # the survivor publishes the last ticks
        loop.loop.call_soon_threadsafe(stop.set)
        watch.result(10)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
        loop.close()
    resumed = [t for t, e in seen if e != epoch_before and t > killed_at]
    assert resumed, "no rollup from another tracker after the kill"
    failover_s = resumed[0] - killed_at
    assert failover_s < 5.0
    result = asyncio.run(audit_rollups(url, topo)).compare(expected_of(agent))
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0
    assert result["expected"] == agent.stats.frames_produced > 0


@pytest.mark.slow
def test_nats_server_restart_under_load_loses_nothing(nats_server: NatsServer) -> None:
    url = nats_server.url
    agent, twin = twin_agent(url)
    topo = twin.topo
    tracker = Tracker(url, topo)
    loop = LoopThread()
    try:
        t_fut = loop.spawn(tracker.run(duration_s=14.0))
        a_fut = loop.spawn(agent.run(duration_s=8.0))
        time.sleep(3.0)
        nats_server.restart(down_s=1.5)  # the agent buffers meanwhile; JetStream keeps its store
        a_fut.result(40)
        stats = t_fut.result(40)
    finally:
        loop.close()
    assert agent.stats.disconnects >= 1
    assert agent.stats.frames_acked == agent.stats.frames_produced
    result = asyncio.run(audit_rollups(url, topo)).compare(expected_of(agent))
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0, (result, stats)


@pytest.mark.slow
def test_agent_started_while_the_bus_is_down_buffers_until_it_comes(tmp_path: Path) -> None:
    srv = NatsServer(tmp_path / "nats")  # not started yet: its port is reserved, nothing listens
    agent, twin = twin_agent(srv.url)
    loop = LoopThread()
    try:
        a_fut = loop.spawn(agent.run(duration_s=6.0))
        time.sleep(2.5)
        assert agent.stats.frames_produced > 0 and agent.stats.frames_acked == 0
        srv.start()
        tracker = Tracker(srv.url, twin.topo)
        t_fut = loop.spawn(tracker.run(duration_s=9.0))
        a_fut.result(40)
        t_fut.result(40)
        assert agent.stats.frames_acked == agent.stats.frames_produced and agent.stats.frames_dropped == 0
        result = asyncio.run(audit_rollups(srv.url, twin.topo)).compare(expected_of(agent))
        assert result["lost"] == 0 and result["duplicated"] == 0
    finally:
        loop.close()
        srv.stop()
