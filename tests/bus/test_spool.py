"""The agent's disk spool: the file format on its own, then agents stopped or killed while the bus is down whose
frames all reach the hall rollups once a new agent on the same spool finds the bus again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from powerplane.bus import codec
from powerplane.bus.server import NatsServer
from powerplane.bus.spool import MAGIC, Spool
from powerplane.bus.tracker import Tracker
from powerplane.bus.verify import audit_rollups

from .helpers import LoopThread, expected_of, twin_agent

MSGS = [("pp.tel.a", b"\x01\x02\x03", 2), ("pp.tel.b", b"", 0), ("pp.plant.x", bytes(range(200)), 0)]


def test_spool_round_trip_append_rewrite_and_clear(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "d" / "agent.spool")
    assert sp.load().messages == []
    sp.append(MSGS[:2])
    sp.append(MSGS[2:])
    sp.close()
    assert Spool(sp.path).load().messages == MSGS
    sp.rewrite(MSGS[1:])
    got = Spool(sp.path).load()
    assert got.messages == MSGS[1:] and got.damaged_bytes == 0 and got.detail == "whole"
    assert not sp.path.with_name("agent.spool.tmp").exists()
    sp.rewrite([])  # nothing left: no file
    assert not sp.path.exists()
    sp.append(MSGS)
    sp.clear()
    assert not sp.path.exists() and sp.records == 0


def test_a_torn_tail_keeps_every_whole_record_and_reports_the_rest(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "a.spool")
    sp.append(MSGS)
    sp.close()
    whole = sp.path.read_bytes()
    sp.path.write_bytes(whole[:-50])  # a crash in the middle of the last write
    got = Spool(sp.path).load()
    sizes = [14 + len(subj) + len(pay) for subj, pay, _ in MSGS]  # record header <HIII, subject, payload
    assert len(whole) == len(MAGIC) + sum(sizes)
    assert got.messages == MSGS[:2] and got.damaged_bytes == len(whole) - 50 - len(MAGIC) - sizes[0] - sizes[1]
    assert got.detail.startswith("torn record")
    damaged = bytearray(whole)
    damaged[len(MAGIC) + 16] ^= 0xFF  # a flipped bit in the first record's subject
    sp.path.write_bytes(bytes(damaged))
    got = Spool(sp.path).load()
    assert got.messages == [] and got.detail.startswith("bad checksum") and got.damaged_bytes == len(whole) - 8


def test_a_file_that_is_not_a_spool_is_refused_with_its_name(tmp_path: Path) -> None:
    p = tmp_path / "x.spool"
    p.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an agent spool"):
        Spool(p).load()


def _seqs_by_node(spool: Path) -> dict[int, tuple[int, int]]:
    """(first, last) sequence number per node of the frames in a spool file; they must be contiguous."""
    seen: dict[int, list[int]] = {}
    for _, payload, n in Spool(spool).load().messages:
        if n:
            recs = codec.decode_frames(payload)
            for node, seq in zip(recs["node"].tolist(), recs["seq"].tolist(), strict=True):
                seen.setdefault(int(node), []).append(int(seq))
    out = {}
    for node, seqs in seen.items():
        s = np.sort(np.array(seqs))
        assert np.all(np.diff(s) == 1), f"node {node}: gaps in the spool"
        out[node] = (int(s[0]), int(s[-1]))
    return out


def _resume_and_audit(srv: NatsServer, spool: Path, first: dict[int, tuple[int, int]], skip_ticks: int) -> None:
    """Start the bus, a tracker and a new agent on ``spool`` (its twin skipped past the first agent's ticks);
    every frame of the first agent and of the new one reaches the rollups once, none lost."""
    srv.start()
    agent, twin = twin_agent(srv.url, spool=spool)
    for _ in range(skip_ticks):  # the new agent's twin plays on from where the first stopped
        agent.source.read()
    loop = LoopThread()
    try:
        t_fut = loop.spawn(Tracker(srv.url, twin.topo).run(duration_s=8.0))
        agent_stats = loop.spawn(agent.run(duration_s=3.0)).result(60)
        t_fut.result(60)
    finally:
        loop.close()
    assert agent_stats.frames_restored == sum(b - a + 1 for a, b in first.values())
    assert agent_stats.frames_acked == agent_stats.frames_produced + agent_stats.frames_restored
    assert not spool.exists()  # the bus has everything: the spool is gone
    audit = asyncio.run(audit_rollups(srv.url, twin.topo))
    earlier = audit.compare(first)
    assert earlier["lost"] == 0 and earlier["duplicated"] == 0, earlier
    now = audit.compare(expected_of(agent))
    assert now["lost"] == 0 and now["duplicated"] == 0, now


@pytest.mark.slow
def test_agent_stopped_while_the_bus_is_down_hands_its_frames_to_the_next(tmp_path: Path) -> None:
    srv = NatsServer(tmp_path / "nats")  # reserved port, nothing listens yet
    spool = tmp_path / "agent.spool"
    agent, _ = twin_agent(srv.url, spool=spool)
    loop = LoopThread()
    try:
        t0 = time.monotonic()
        st = loop.spawn(agent.run(max_ticks=20)).result(30)
        assert time.monotonic() - t0 < 10.0  # no 30-s wait for a bus that is down: the frames go to disk
    finally:
        loop.close()
    assert st.frames_acked == 0 and st.frames_spooled_at_stop == st.frames_produced > 0
    first = _seqs_by_node(spool)
    assert first == expected_of(agent)
    try:
        _resume_and_audit(srv, spool, first, skip_ticks=40)
    finally:
        srv.stop()


@pytest.mark.slow
def test_agent_killed_while_the_bus_is_down_loses_nothing_it_spooled(tmp_path: Path) -> None:
    srv = NatsServer(tmp_path / "nats")
    spool = tmp_path / "agent.spool"
    cmd = [str(Path(sys.executable).parent / "powerplane"), "agent", "--url", srv.url, "--scenario", "small"]
    cmd += ["--plant", "--rate", "10", "--spool", str(spool)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60.0
        while (not spool.exists() or spool.stat().st_size < 100_000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert spool.exists(), "the agent wrote no spool while the bus was down"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    first = _seqs_by_node(spool)
    assert first and len(first) == 32  # every node of the small site
    ticks = max(b - a + 1 for a, b in first.values())
    try:
        _resume_and_audit(srv, spool, first, skip_ticks=ticks + 20)
    finally:
        srv.stop()
