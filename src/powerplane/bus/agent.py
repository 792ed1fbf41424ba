"""The node agent: reads a node's GPUs (NVML, or the twin playing many nodes), publishes node frames at 1-10 Hz,
buffers them while the bus is down, and applies the commands addressed to its nodes.

Every frame carries a per-node sequence number, increasing across agent restarts (the first is the wall clock
in milliseconds), so trackers can drop duplicates and replays. Frames go to JetStream with asynchronous publish
acks; a frame leaves the agent's buffer only when the server has stored it. While the connection is down, or
when acks stop coming, frames stay queued in order (bounded: the oldest are dropped and counted when full) and
everything not acknowledged is sent again once the server is back; the trackers discard the duplicates.

With a spool file (``spool=PATH``, ``powerplane agent --spool PATH``) what is not acknowledged also survives the
agent itself: from the moment the link drops (or before it first comes up) every queued message is also appended
to the spool; once the bus has stored everything the spool is deleted; an agent stopped with frames unsent
rewrites it with exactly those, and the next agent on the same spool sends them first (their sequence numbers
are older than its own, so the trackers keep order and drop whatever was already stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from numpy.typing import NDArray

from powerplane.bus import codec, subjects
from powerplane.bus.jet import connect, ensure_streams
from powerplane.bus.server import BusError
from powerplane.bus.spool import Message, Spool
from powerplane.core.clock import Clock, WallClock, perf_counter_s
from powerplane.core.commands import BessSetpoint, Command, CommandResult, GpuPowerCap
from powerplane.core.frames import Frame
from powerplane.sources.base import Source
from powerplane.topology import Topology

log = logging.getLogger(__name__)

PLANT_LEVELS = ("rack", "hall", "site", "bess")


class NodeEncoder:
    """Encodes the frames of the played nodes that have ``k`` GPUs each, one vectorized pass per tick.

    ``src_nodes`` are node indices in the source's topology; ``global_nodes`` the same nodes in the site's.
    Messages are one per rack (``batch="rack"``), one per row (``"row"``) or one per node (``"node"``).
    """

    def __init__(
        self,
        site_topo: Topology,
        src_topo: Topology,
        src_nodes: NDArray[np.int64],
        global_nodes: NDArray[np.int64],
        batch: str,
    ) -> None:
        counts = np.bincount(src_topo.gpu_node, minlength=src_topo.n_nodes)[src_nodes]
        self.k = int(counts[0])
        starts = src_topo.segment_starts("gpu", "node")[src_nodes]
        self.gpu_idx = starts[:, None] + np.arange(self.k)[None, :]
        self.src_nodes = src_nodes
        self.global_nodes = global_nodes
        self.dtype = codec.node_dtype(self.k)
        rec = np.zeros(src_nodes.size, dtype=self.dtype)
        rec["magic"] = codec.MAGIC_NODE
        rec["version"] = codec.SCHEMA_VERSION
        rec["node"] = global_nodes
        rec["n_gpus"] = self.k
        rec["gpu_mask"] = codec.FULL_GPU_MASK
        rec["node_mask"] = codec.FULL_NODE_MASK
        self.rec = rec
        site_name = site_topo.site_name
        rack = site_topo.node_rack[global_nodes]
        hall = site_topo.row_hall[site_topo.rack_row[rack]]
        row = site_topo.rack_row[rack]
        if batch in ("rack", "row"):
            group = rack if batch == "rack" else row
            cut = np.flatnonzero(np.diff(group)) + 1
            bounds = np.concatenate(([0], cut, [rack.size]))
        elif batch == "node":
            bounds = np.arange(rack.size + 1)
        else:
            raise ValueError(f"batch must be 'node', 'rack' or 'row', got {batch!r}")
        self.messages: list[tuple[str, int, int]] = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            h = site_topo.hall_names[int(hall[a])]
            if batch == "row":
                subject = subjects.tel_subject(site_name, h, site_topo.row_names[int(row[a])], subjects.ROW_BATCH)
            elif batch == "rack":
                subject = subjects.tel_subject(site_name, h, site_topo.rack_names[int(rack[a])], subjects.RACK_BATCH)
            else:
                node = site_topo.node_names[int(global_nodes[a])]
                subject = subjects.tel_subject(site_name, h, site_topo.rack_names[int(rack[a])], node)
            self.messages.append((subject, a, b))

    def encode(self, frame: Frame, seq: int, sent_s: float, first: bool = False) -> list[tuple[str, bytes, int]]:
        rec = self.rec
        rec["flags"] = codec.FLAG_FIRST if first else 0
        rec["seq"] = seq
        rec["t_s"] = frame.t_s
        rec["sent_s"] = sent_s
        gpu = frame.levels.get("gpu", {})
        for name, _ in codec.GPU_METRICS:
            arr = gpu.get(name)
            rec[f"gpu.{name}"] = np.nan if arr is None else np.asarray(arr, dtype=np.float64)[self.gpu_idx]
        node = frame.levels.get("node", {})
        for name in codec.NODE_METRICS:
            arr = node.get(name)
            rec[f"node.{name}"] = np.nan if arr is None else np.asarray(arr, dtype=np.float64)[self.src_nodes]
        buf = memoryview(rec.tobytes())
        size = self.dtype.itemsize
        return [(subj, bytes(buf[a * size : b * size]), b - a) for subj, a, b in self.messages]


@dataclass
class _Out:
    subject: str
    payload: bytes
    n_frames: int
    fut: asyncio.Future[Any] | None = None
    sent_s: float = 0.0


@dataclass
class AgentStats:
    frames_produced: int = 0
    frames_acked: int = 0
    frames_resent: int = 0
    frames_dropped: int = 0  # buffer overflow: the oldest frames, counted, never silently
    max_buffered_frames: int = 0
    frames_restored: int = 0  # from the spool of an earlier agent, sent first
    spool_damaged_bytes: int = 0  # a torn or damaged spool tail, dropped and reported
    frames_spooled_at_stop: int = 0  # left unsent at stop, in the spool for the next agent
    ticks: int = 0
    late_ticks: int = 0
    disconnects: int = 0
    first_seq: int = 0
    last_seq: int = 0
    commands: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["commands"] = dict(self.commands)
        return d


class Agent:
    """Publishes the frames of ``nodes`` (site node indices) read from ``source`` and applies their commands.

    ``node_map[i]`` is the site node index of the source's node ``i`` (the twin: identity; NVML: the one node).
    ``plant=True`` also publishes the plant frame (racks, halls, site meters, batteries) and takes battery
    commands. ``actuator`` applies commands (the twin, or an NVML power capper adapter); None refuses them.
    """

    def __init__(
        self,
        url: str,
        site_topo: Topology,
        source: Source,
        *,
        node_map: NDArray[np.int64] | None = None,
        nodes: NDArray[np.int64] | None = None,
        plant: bool = False,
        actuator: Any = None,
        rate_hz: float = 10.0,
        batch: str = "rack",
        buffer_frames: int = 2_000_000,
        max_inflight: int = 2000,
        ack_timeout_s: float = 2.0,
        clock: Clock | None = None,
        wait_for_bus_s: float | None = None,
        spool: Path | None = None,
    ) -> None:
        if not 0.1 <= rate_hz <= 50.0:
            raise ValueError(f"rate must be within 0.1-50 Hz, got {rate_hz}")
        self.url = url
        self.topo = site_topo
        self.source = source
        src_topo = source.topology
        self.node_map = np.arange(src_topo.n_nodes) if node_map is None else np.asarray(node_map, dtype=np.int64)
        if self.node_map.size != src_topo.n_nodes or self.node_map.max(initial=0) >= site_topo.n_nodes:
            raise ValueError("node_map needs one site node index per source node")
        played = self.node_map if nodes is None else np.asarray(nodes, dtype=np.int64)
        src_of = {int(g): i for i, g in enumerate(self.node_map.tolist())}
        missing = [int(n) for n in played if int(n) not in src_of]
        if missing:
            raise ValueError(f"{len(missing)} nodes are not in this agent's source (first: {missing[0]})")
        played = np.sort(played)
        src_nodes = np.array([src_of[int(n)] for n in played], dtype=np.int64)
        gpn = np.bincount(src_topo.gpu_node, minlength=src_topo.n_nodes)[src_nodes]
        site_gpn = np.bincount(site_topo.gpu_node, minlength=site_topo.n_nodes)[played]
        if np.any(gpn != site_gpn):
            bad = int(np.flatnonzero(gpn != site_gpn)[0])
            raise ValueError(
                f"node {site_topo.node_names[int(played[bad])]} has {gpn[bad]} GPUs here, the site says {site_gpn[bad]}"
            )
        self.encoders = [
            NodeEncoder(site_topo, src_topo, src_nodes[gpn == k], played[gpn == k], batch) for k in np.unique(gpn)
        ]
        self.played = played
        self._played_names = {site_topo.node_names[int(n)]: int(n) for n in played}
        self._src_gpu_start = src_topo.segment_starts("gpu", "node")
        self._src_of = src_of
        self.plant = plant
        self.actuator = actuator
        self.period_s = 1.0 / rate_hz
        self.clock: Clock = clock or WallClock()
        self.buffer_frames = int(buffer_frames)
        self.max_inflight = int(max_inflight)
        self.ack_timeout_s = float(ack_timeout_s)
        self.wait_for_bus_s = wait_for_bus_s  # None: keep trying (and buffering) for as long as it takes
        self.outbox: deque[_Out] = deque()
        self.inflight: deque[_Out] = deque()
        self._buffered = 0
        self.stats = AgentStats()
        self.seq0 = 0
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reconnected = False
        self._closing = False
        self.spool = Spool(spool) if spool is not None else None
        self._spooling = self.spool is not None  # down until the bus has stored everything once

    # ------------------------------------------------------------------------------------------ producing

    def stop(self) -> None:
        self._stop.set()

    def _unacked(self) -> list[Message]:
        return [(o.subject, o.payload, o.n_frames) for o in (*self.inflight, *self.outbox)]

    def _spool_tick(self, msgs: list[Message]) -> None:
        """While the link is down, this tick's messages go to the spool too (kept near the queue's size)."""
        if self.spool is None or not self._spooling:
            return
        if self.spool.records > 2 * (len(self.outbox) + len(self.inflight)) + 1000:
            self.spool.rewrite(self._unacked())  # the queue dropped its oldest: so does the spool
        else:
            self.spool.append(msgs)

    def _restore(self) -> None:
        if self.spool is None:
            return
        loaded = self.spool.load()
        self.stats.spool_damaged_bytes = loaded.damaged_bytes
        for subject, payload, n in loaded.messages:
            self.outbox.append(_Out(subject, payload, n))
            self._buffered += n
            self.stats.frames_restored += n
        if loaded.messages:
            log.info("restored %d frames from %s (%s)", self.stats.frames_restored, self.spool.path, loaded.detail)

    def _enqueue(self, subject: str, payload: bytes, n_frames: int) -> None:
        self.outbox.append(_Out(subject, payload, n_frames))
        self._buffered += n_frames
        while self._buffered > self.buffer_frames and self.outbox:
            old = self.outbox.popleft()
            self._buffered -= old.n_frames
            self.stats.frames_dropped += old.n_frames
        self.stats.max_buffered_frames = max(self.stats.max_buffered_frames, self._buffered)
        self._wake.set()

    def emit(self, frame: Frame) -> None:
        """Encode and queue one tick of every played node (and the plant frame)."""
        seq = self.seq0 + self.stats.ticks + 1
        sent_s = self.clock.now_s()
        tick: list[Message] = []
        for enc in self.encoders:
            for subject, payload, n in enc.encode(frame, seq, sent_s, first=self.stats.ticks == 0):
                self._enqueue(subject, payload, n)
                tick.append((subject, payload, n))
                self.stats.frames_produced += n
        if self.plant:
            levels = {lv: frame.levels[lv] for lv in PLANT_LEVELS if lv in frame.levels}
            plant = codec.encode_plant(seq, frame.t_s, sent_s, levels)
            self._enqueue(subjects.plant_subject(self.topo.site_name), plant, 0)
            tick.append((subjects.plant_subject(self.topo.site_name), plant, 0))
        self._spool_tick(tick)
        self.stats.ticks += 1
        self.stats.last_seq = seq
        if not self.stats.first_seq:
            self.stats.first_seq = seq

    # ------------------------------------------------------------------------------------------ sending

    def _requeue_inflight(self) -> None:
        """Everything not acknowledged goes back to the front of the queue, in order."""
        if not self.inflight:
            return
        back = list(self.inflight)
        self.inflight.clear()
        for o in back:
            if o.fut is not None and not o.fut.done():
                o.fut.cancel()
            o.fut = None
            self.stats.frames_resent += o.n_frames
        self.outbox.extendleft(reversed(back))

    def _reap(self) -> None:
        now = perf_counter_s()
        while self.inflight:
            head = self.inflight[0]
            assert head.fut is not None
            if not head.fut.done():
                if now - head.sent_s > self.ack_timeout_s:
                    self._requeue_inflight()
                return
            if head.fut.cancelled() or head.fut.exception() is not None:
                self._requeue_inflight()
                return
            self.inflight.popleft()
            self._buffered -= head.n_frames
            self.stats.frames_acked += head.n_frames
        # Here nothing is in flight; with the queue empty too the bus has stored everything: no spool needed.
        connected = self.nc is not None and self.nc.is_connected
        if self._spooling and self.spool is not None and not self.outbox and connected:
            self.spool.clear()
            self._spooling = False

    async def _pump(self) -> None:
        assert self.nc is not None and self.js is not None
        while True:
            if self._reconnected:
                self._reconnected = False
                self._requeue_inflight()
            self._reap()
            if self.nc.is_connected:
                while self.outbox and len(self.inflight) < self.max_inflight:
                    o = self.outbox.popleft()
                    try:
                        o.fut = await self.js.publish_async(o.subject, o.payload, wait_stall=0.5)
                    except Exception:  # disconnected mid-way or stalled: keep it, retry later
                        self.outbox.appendleft(o)
                        break
                    o.sent_s = perf_counter_s()
                    self.inflight.append(o)
            if self._stop.is_set() and not self.outbox and not self.inflight:
                return
            if self.inflight and self.inflight[0].fut is not None:
                await asyncio.wait({self.inflight[0].fut}, timeout=0.05)
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.05)

    async def _on_disconnect(self) -> None:
        if not self._closing:
            self.stats.disconnects += 1
            if self.spool is not None and not self._spooling:
                self.spool.rewrite(self._unacked())  # what is in flight may never be acknowledged
                self._spooling = True

    async def _on_reconnect(self) -> None:
        # Acks of what was in flight when the link dropped will never come: send it all again, first.
        self._reconnected = True
        self._wake.set()

    # ------------------------------------------------------------------------------------------ commands

    async def _on_command(self, msg: Msg) -> None:
        device = msg.subject.rsplit(".", 1)[-1]
        try:
            body = json.loads(msg.data)
            if body.get("v") != 1:
                raise ValueError(f"command schema version {body.get('v')!r}, this build reads 1")
            result = self._apply(device, body)
        except (ValueError, KeyError, TypeError) as exc:
            self.stats.commands["rejected"] += 1
            result = {"v": 1, "applied": False, "clipped": False, "detail": f"bad command: {exc}"}
        if result is None:
            return  # another agent's device
        self.stats.commands["applied" if result["applied"] else "refused"] += 1
        if msg.reply and self.nc is not None:
            await self.nc.publish(msg.reply, json.dumps(result).encode())

    def _apply(self, device: str, body: dict[str, Any]) -> dict[str, Any] | None:
        cmd: Command
        if device in self._played_names:
            if body["kind"] != "gpu_power_cap":
                raise ValueError(f"a node takes gpu_power_cap, not {body['kind']!r}")
            src_node = self._src_of[self._played_names[device]]
            local = np.asarray(body["gpus"], dtype=np.int64)
            k = int(np.sum(self.source.topology.gpu_node == src_node))
            if local.size == 0 or local.min() < 0 or local.max() >= k:
                raise ValueError(f"GPU indices must be within 0-{k - 1} on {device}")
            caps = np.asarray(body["cap_w"], dtype=np.float64)
            cmd = GpuPowerCap(self._src_gpu_start[src_node] + local, caps if caps.ndim else float(caps))
        elif self.plant and device.startswith("bess-"):
            cmd = BessSetpoint(int(device[5:]), float(body["power_w"]))
        else:
            return None
        if self.actuator is None:
            return {"v": 1, "applied": False, "clipped": False, "detail": "this agent applies no commands"}
        res: CommandResult = self.actuator.apply([cmd])[0]
        return {"v": 1, "applied": bool(res.applied), "clipped": bool(res.clipped), "detail": res.detail}

    # ------------------------------------------------------------------------------------------ running

    async def _connect_and_pump(self) -> None:
        """Connect (retrying every second while the bus is down, up to ``wait_for_bus_s``), then send."""
        t0 = perf_counter_s()
        while True:
            try:
                self.nc = await connect(
                    self.url, "powerplane-agent", on_disconnect=self._on_disconnect, on_reconnect=self._on_reconnect
                )
                break
            except BusError:
                if self.wait_for_bus_s is not None and perf_counter_s() - t0 >= self.wait_for_bus_s:
                    raise
                if self._stop.is_set():
                    return
                self.stats.disconnects = max(self.stats.disconnects, 1)  # the bus was down from the start
                await asyncio.sleep(1.0)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, self.topo.site_name)
        await self.nc.subscribe(f"pp.cmd.{subjects.token(self.topo.site_name)}.>", cb=self._on_command)
        await self._pump()

    async def run(self, duration_s: float | None = None, max_ticks: int | None = None) -> AgentStats:
        """Publish until :meth:`stop`, ``duration_s`` or ``max_ticks``; then flush what is queued (up to 30 s).

        Frames are produced from the start even while the bus cannot be reached yet (they wait in the buffer);
        :class:`BusError` when it still cannot be reached after ``wait_for_bus_s``.
        """
        self.seq0 = int(self.clock.now_s() * 1000.0)
        self._restore()
        sender = asyncio.create_task(self._connect_and_pump())
        t_end = None if duration_s is None else self.clock.now_s() + duration_s
        next_t = self.clock.now_s()
        try:
            while not self._stop.is_set():
                if sender.done():  # gave up connecting
                    break
                if max_ticks is not None and self.stats.ticks >= max_ticks:
                    break
                if t_end is not None and self.clock.now_s() >= t_end:
                    break
                self.emit(self.source.read())
                next_t += self.period_s
                delay = next_t - self.clock.now_s()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                else:
                    self.stats.late_ticks += 1
                    if delay < -5 * self.period_s:
                        next_t = self.clock.now_s()
                    await asyncio.sleep(0)
        finally:
            self._stop.set()
            # With a spool there is no need to wait long for a bus that is down: what is unsent goes to disk.
            down = self.nc is None or not self.nc.is_connected
            flush_s = 1.0 if self.spool is not None and down else 30.0
            try:
                await asyncio.wait_for(asyncio.shield(sender), flush_s)
            except TimeoutError:
                where = f", kept in {self.spool.path}" if self.spool is not None else ""
                log.warning("agent stopped with %d frames not acknowledged%s", self._buffered, where)
                sender.cancel()
            finally:
                self._closing = True
                if self.nc is not None:
                    await self.nc.close()
                if self.spool is not None:
                    left = self._unacked()
                    self.spool.rewrite(left)  # deleted when nothing is left
                    self.stats.frames_spooled_at_stop = sum(n for _, _, n in left)
                    self.spool.close()
        return self.stats
