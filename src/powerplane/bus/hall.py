"""A hall's aggregation, without the bus: node frames in, one rollup per tick out, each frame counted once.

Frames are grouped by tick (``round(t_s / tick_s)``). A tick closes when every node of the hall has reported,
when frames ``close_after_ticks`` ticks newer have arrived, or ``timeout_s`` after its first frame. A frame for a
tick already closed (a node that was buffering while the bus was down) is not lost: it goes out in a further part
of that tick's rollup.

Duplicates are decided against the *published* accept state (per node: every sequence up to ``contig_seq`` was
published, plus the sequences in ``extras`` above it) and against the open ticks. Each rollup carries that state,
so a tracker that takes a hall over restores it from the hall's last rollup and neither loses nor double-counts a
frame: what was published is rejected as duplicate when redelivered, what was not is aggregated again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from powerplane.bus import codec
from powerplane.core.clock import perf_counter_s
from powerplane.topology import Topology

REJECT_REASONS = ("schema_version", "malformed", "unknown_node", "duplicate", "replayed", "bad_time")


@dataclass
class Window:
    tick: int
    t_s: float
    recs: NDArray[np.void]
    present: NDArray[np.bool_]
    seq: NDArray[np.uint64]
    first_s: float
    late: bool
    part: int = 0
    n: int = 0
    commit: tuple[NDArray[np.uint64], dict[int, set[int]], int] | None = None  # accept state once published


class HallAggregator:
    """Aggregates hall ``hall`` (an index into ``topo.hall_names``)."""

    def __init__(
        self,
        topo: Topology,
        hall: int,
        *,
        tick_s: float = 0.1,
        close_after_ticks: int = 3,
        timeout_s: float = 1.0,
        reorder_frames: int = 64,
    ) -> None:
        self.topo = topo
        self.hall = hall
        hall_of_node = topo.parent_index_cached("node", "hall")
        nodes = np.flatnonzero(hall_of_node == hall)
        self.node0 = int(nodes[0])
        self.n_nodes = int(nodes.size)
        gpn = np.bincount(topo.gpu_node, minlength=topo.n_nodes)[nodes]
        if np.any(gpn != gpn[0]):
            raise ValueError(f"hall {topo.hall_names[hall]} mixes GPU counts per node; a tracker needs them equal")
        self.k = int(gpn[0])
        self.dtype = codec.node_dtype(self.k)
        self.tick_s = float(tick_s)
        self.close_after_ticks = int(close_after_ticks)
        self.timeout_s = float(timeout_s)
        self.reorder_frames = int(reorder_frames)
        self.contig = np.zeros(self.n_nodes, dtype=np.uint64)
        self.extras: dict[int, set[int]] = {}
        self.windows: dict[int, Window] = {}
        self.closed_through = -(2**62)
        self.max_tick = -(2**62)
        self._parts: dict[int, int] = {}
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.gaps_skipped = 0

    # ------------------------------------------------------------------------------------------ state

    def restore(self, rollup: codec.HallRollup) -> None:
        """Take the accept state of the hall's last published rollup; drop every open tick (it is redelivered)."""
        if rollup.n_hall_nodes != self.n_nodes:
            raise ValueError(f"rollup holds {rollup.n_hall_nodes} nodes, the hall has {self.n_nodes}")
        self.contig = rollup.contig_seq.astype(np.uint64).copy()
        self.extras = {}
        for n, s in zip(rollup.extra_node.tolist(), rollup.extra_seq.tolist(), strict=True):
            self.extras.setdefault(int(n), set()).add(int(s))
        self.windows.clear()
        self.closed_through = rollup.tick
        self.max_tick = rollup.tick
        self._parts = {rollup.tick: rollup.part + 1}

    def reset_open(self) -> None:
        self.windows.clear()

    def open_low_tick(self) -> float:
        return float(min(self.windows)) if self.windows else float("inf")

    # ------------------------------------------------------------------------------------------ input

    def add(self, recs: NDArray[np.void]) -> int:
        """Take the frames of one message; return the highest tick among the accepted ones (-2**62 if none)."""
        if recs.dtype != self.dtype:
            self.rejected["malformed"] += int(recs.size)
            return -(2**62)
        local = recs["node"].astype(np.int64) - self.node0
        t = recs["t_s"]
        ok = (local >= 0) & (local < self.n_nodes) & np.isfinite(t)
        if ok.all() and not (self.extras and self.extras.keys() & set(local.tolist())):
            ticks = np.rint(t / self.tick_s).astype(np.int64)
            if (ticks == ticks[0]).all() and np.unique(local).size == local.size:
                return self._add_one_tick(recs, local, int(ticks[0]))
        return self._add_each(recs, local)

    def _add_one_tick(self, recs: NDArray[np.void], local: NDArray[np.int64], tick: int) -> int:
        """The common case, vectorized: the frames of one message share a tick (one rack at one instant)."""
        seq = recs["seq"]
        fresh = seq > self.contig[local]
        n_dup = int(local.size - fresh.sum())
        w = self.windows.get(tick)
        if w is None:
            w = self._open(tick, tick * self.tick_s)
        taken = w.present[local]
        if taken.any():
            same = taken & (w.seq[local] == seq)
            n_dup += int((same & fresh).sum())
            self.rejected["replayed"] += int((taken & ~same & fresh).sum())
            fresh &= ~taken
        if n_dup:
            self.rejected["duplicate"] += n_dup
        if not fresh.any():
            return -(2**62)
        idx = local[fresh]
        w.recs[idx] = recs[fresh]
        w.present[idx] = True
        w.seq[idx] = seq[fresh]
        k = int(idx.size)
        w.n += k
        self.accepted += k
        self.max_tick = max(self.max_tick, tick)
        return tick

    def _add_each(self, recs: NDArray[np.void], local_all: NDArray[np.int64]) -> int:
        top = -(2**62)
        t_all = recs["t_s"]
        for i in range(recs.size):
            local = int(local_all[i])
            if not 0 <= local < self.n_nodes:
                self.rejected["unknown_node"] += 1
                continue
            t = float(t_all[i])
            if not np.isfinite(t):
                self.rejected["bad_time"] += 1
                continue
            seq = int(recs["seq"][i])
            ex = self.extras.get(local)
            if seq <= int(self.contig[local]) or (ex is not None and seq in ex):
                self.rejected["duplicate"] += 1
                continue
            tick = round(t / self.tick_s)
            w = self.windows.get(tick)
            if w is None:
                w = self._open(tick, t)
            if w.present[local]:
                self.rejected["duplicate" if int(w.seq[local]) == seq else "replayed"] += 1
                continue
            w.recs[local] = recs[i]
            w.present[local] = True
            w.seq[local] = seq
            w.n += 1
            self.accepted += 1
            top = max(top, tick)
        self.max_tick = max(self.max_tick, top)
        return top

    def _open(self, tick: int, t_s: float) -> Window:
        late = tick <= self.closed_through
        w = Window(
            tick=tick,
            t_s=tick * self.tick_s,
            recs=np.zeros(self.n_nodes, dtype=self.dtype),
            present=np.zeros(self.n_nodes, dtype=bool),
            seq=np.zeros(self.n_nodes, dtype=np.uint64),
            first_s=perf_counter_s(),
            late=late,
        )
        self.windows[tick] = w
        return w

    # ------------------------------------------------------------------------------------------ output

    def due(self, force: bool = False) -> list[Window]:
        """The ticks to publish now, oldest first (late parts first of all)."""
        now = perf_counter_s()
        out: list[Window] = [w for w in self.windows.values() if w.late]
        for tick in sorted(t for t, w in self.windows.items() if not w.late):
            w = self.windows[tick]
            if (
                force
                or w.n == self.n_nodes
                or tick <= self.max_tick - self.close_after_ticks
                or now - w.first_s > self.timeout_s
            ):
                out.append(w)
            else:
                break
        return out

    def rollup(self, w: Window, epoch: int) -> codec.HallRollup:
        """The rollup of window ``w`` with the accept state as it will be once ``w`` is published."""
        w.commit = self._commit_state(w)
        contig, extras, _ = w.commit
        idx = np.flatnonzero(w.present)
        frames = w.recs[idx]
        extra_node = np.array([n for n, ss in sorted(extras.items()) for _ in ss], dtype=np.uint32)
        extra_seq = np.array([s for _, ss in sorted(extras.items()) for s in sorted(ss)], dtype=np.uint64)
        gp = float(np.nansum(frames["gpu.power_w"], dtype=np.float64)) if idx.size else 0.0
        npw = float(np.nansum(frames["node.power_w"], dtype=np.float64)) if idx.size else 0.0
        part = self._parts.get(w.tick, 0)
        return codec.HallRollup(
            hall=self.hall,
            tick=w.tick,
            t_s=w.t_s,
            part=part,
            epoch=epoch,
            n_hall_nodes=self.n_nodes,
            frames=frames,
            nodes=idx.astype(np.uint32),
            contig_seq=contig,
            extra_node=extra_node,
            extra_seq=extra_seq,
            gpu_power_w=gp,
            node_power_w=npw,
            coverage=idx.size / self.n_nodes,
        )

    def _commit_state(self, w: Window) -> tuple[NDArray[np.uint64], dict[int, set[int]], int]:
        gaps = 0
        contig = self.contig.copy()
        extras = {n: set(s) for n, s in self.extras.items()}
        idx = np.flatnonzero(w.present)
        seq = w.seq[idx]
        # An agent's first frame of a node (flag FIRST) starts its sequence: nothing below it is owed.
        first = (w.recs["flags"][idx] & codec.FLAG_FIRST) != 0
        nxt = (seq == contig[idx] + 1) | first
        easy = idx[nxt & ~np.isin(idx, list(extras))] if extras else idx[nxt]
        contig[easy] = w.seq[easy]
        for n in np.setdiff1d(idx, easy).tolist():
            s = int(w.seq[n])
            ss = extras.setdefault(n, set())
            if w.recs["flags"][n] & codec.FLAG_FIRST:
                ss.difference_update([x for x in ss if x < s])
                contig[n] = s - 1
            ss.add(s)
            c = int(contig[n])
            while c + 1 in ss:
                c += 1
                ss.discard(c)
            if len(ss) > self.reorder_frames:  # the gap will not fill (an agent restarted): give it up
                low = min(ss)
                gaps += low - c - 1 if c else 0  # a node first met mid-run owes no count
                c = low
                ss.discard(low)
                while c + 1 in ss:
                    c += 1
                    ss.discard(c)
            contig[n] = c
            if not ss:
                del extras[n]
        return contig, extras, gaps

    def published(self, w: Window) -> None:
        """Record that window ``w``'s rollup is stored on the bus."""
        self.contig, self.extras, gaps = w.commit if w.commit is not None else self._commit_state(w)
        self.gaps_skipped += gaps
        self._parts[w.tick] = self._parts.get(w.tick, 0) + 1
        if len(self._parts) > 4096:
            for t in sorted(self._parts)[:2048]:
                del self._parts[t]
        self.closed_through = max(self.closed_through, w.tick)
        del self.windows[w.tick]
