"""Checking the bus end to end: read every hall rollup stored on the bus and count each node frame.

:func:`audit_rollups` reads the rollup stream from its first message and returns, per node, how many times
each sequence number appears. Compared with what the agents produced (every node publishes sequences
``first_seq..last_seq``), it gives the frames lost and the frames counted twice: the durability tests and the
benchmark use it after killing a tracker or restarting the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError
from numpy.typing import NDArray

from powerplane.bus import codec, subjects
from powerplane.bus.jet import connect
from powerplane.topology import Topology


@dataclass
class RollupAudit:
    rollups: int = 0
    frames: int = 0
    rejected: int = 0
    _nodes: list[NDArray[np.int64]] = field(default_factory=list)
    _seqs: list[NDArray[np.uint64]] = field(default_factory=list)

    def add(self, frames: NDArray[np.void]) -> None:
        self._nodes.append(frames["node"].astype(np.int64))
        self._seqs.append(frames["seq"].astype(np.uint64))

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.uint64], NDArray[np.int64]]:
        """Distinct (node, seq) pairs seen and how many times each."""
        if not self._nodes:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        nodes, seqs = np.concatenate(self._nodes), np.concatenate(self._seqs)
        order = np.lexsort((seqs, nodes))
        nodes, seqs = nodes[order], seqs[order]
        new = np.ones(nodes.size, dtype=bool)
        new[1:] = (nodes[1:] != nodes[:-1]) | (seqs[1:] != seqs[:-1])
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, nodes.size))
        return nodes[starts], seqs[starts], counts

    def compare(self, expected: dict[int, tuple[int, int]]) -> dict[str, int]:
        """``expected[node] = (first_seq, last_seq)`` -> frames expected, seen, lost, duplicated, unexpected."""
        nodes, seqs, counts = self.pairs()
        first = np.full(int(nodes.max(initial=0)) + 1 if nodes.size else 1, 1, dtype=np.uint64)
        last = np.zeros_like(first)
        n_expected = 0
        for node, (a, b) in expected.items():
            if node >= first.size:
                first = np.concatenate((first, np.ones(node + 1 - first.size, dtype=np.uint64)))
                last = np.concatenate((last, np.zeros(node + 1 - last.size, dtype=np.uint64)))
            first[node], last[node] = a, b
            n_expected += b - a + 1
        inside = (seqs >= first[nodes]) & (seqs <= last[nodes]) if nodes.size else np.zeros(0, dtype=bool)
        seen = int(inside.sum())
        return {
            "expected": n_expected,
            "seen": seen,
            "lost": n_expected - seen,
            "duplicated": int((counts[inside] - 1).sum()),
            "unexpected": int((~inside).sum()),
        }


async def backlog(url: str, topo: Topology) -> int:
    """Telemetry messages the hall consumers have not yet acknowledged (waiting or in flight), over all halls."""
    nc = await connect(url, "powerplane-bus-backlog")
    js = nc.jetstream()
    total = 0
    try:
        for hall in topo.hall_names:
            try:
                ci = await js.consumer_info(subjects.tel_stream(topo.site_name), subjects.consumer_name(hall))
            except NotFoundError:
                continue
            total += int(ci.num_pending or 0) + int(ci.num_ack_pending or 0)
    finally:
        await nc.close()
    return total


async def audit_rollups(url: str, topo: Topology, halls: Iterable[str] | None = None) -> RollupAudit:
    """Every rollup of ``halls`` (all by default) on the bus, from the first stored."""
    nc = await connect(url, "powerplane-bus-audit")
    js = nc.jetstream()
    audit = RollupAudit()
    site = topo.site_name
    try:
        for hall in halls or topo.hall_names:
            sub = await js.pull_subscribe(subjects.rollup_subject(site, hall), stream=subjects.rollup_stream(site))
            while True:
                try:
                    msgs = await sub.fetch(200, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    break
                for m in msgs:
                    try:
                        r = codec.HallRollup.decode(m.data)
                    except codec.FrameError:
                        audit.rejected += 1
                        continue
                    audit.rollups += 1
                    audit.frames += int(r.frames.size)
                    audit.add(r.frames)
                    await m.ack()
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
            await sub.unsubscribe()
    finally:
        await nc.close()
    return audit
