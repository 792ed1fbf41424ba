"""The site runtime's side of the bus: :class:`BusSource` (a :class:`~powerplane.sources.base.Source` fed by the
hall rollups and the plant frames) and :class:`BusActuator` (commands to ``pp.cmd.<site>.<hall>.<device>``).

Both run a NATS client on an asyncio loop in a background thread (:class:`BusLink`), so the runtime's cycle calls
plain synchronous ``read()`` and ``apply()``. The source keeps, per GPU and node, the newest reading any rollup
carried, with its own timestamp (``t_s``) so telemetry marks nodes whose tracker stopped as stale, and a
``_reported`` mask so nodes never heard from are missing, not zero.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from numpy.typing import NDArray

from powerplane.bus import codec, subjects
from powerplane.bus.jet import connect, ensure_streams
from powerplane.config.schema import SiteConfig
from powerplane.core.clock import Clock, WallClock, perf_counter_s
from powerplane.core.commands import BessSetpoint, Command, CommandResult, GpuPowerCap
from powerplane.core.errors import SourceError
from powerplane.core.frames import Frame
from powerplane.topology import Topology

T = TypeVar("T")


class BusLink:
    """A NATS connection on its own event loop thread; :meth:`call` runs a coroutine there and waits."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"bus-{name}", daemon=True)
        self._thread.start()
        self.nc: Client = self.call(connect(url, name))
        self._closed = False

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.nc.close(), 10.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)


class _OnBus:
    """What :class:`BusSource` and :class:`BusActuator` share: the site, its topology, a clock and a bus link,
    their own (named ``client``, closed by :meth:`close`) unless one is given."""

    name = "bus"

    def __init__(
        self,
        url: str,
        site: SiteConfig,
        topology: Topology | None,
        clock: Clock | None,
        link: BusLink | None,
        client: str,
    ) -> None:
        self.site = site
        self.topo = topology or Topology.from_site(site)
        self.clock: Clock = clock or WallClock()
        self._own_link = link is None
        self.link = link or BusLink(url, client)

    def close(self) -> None:
        if self._own_link:
            self.link.close()


class BusSource(_OnBus):
    """The site as seen through the hall trackers' rollups (per-GPU and node readings) and the plant frames.

    ``latency`` keeps the last ``keep_latency`` publish-to-receive delays [s] of the node frames (agent clock to
    this clock, same host or synchronized clocks), for benchmarks and ``source_age`` checks.
    """

    def __init__(
        self,
        url: str,
        site: SiteConfig,
        topology: Topology | None = None,
        *,
        clock: Clock | None = None,
        first_timeout_s: float = 10.0,
        keep_latency: int = 200_000,
        link: BusLink | None = None,
    ) -> None:
        super().__init__(url, site, topology, clock, link, "powerplane-bus-source")
        self.first_timeout_s = float(first_timeout_s)
        topo = self.topo
        self._lock = threading.Lock()
        self._gpu = {m: np.full(topo.n_gpus, np.nan) for m, _ in codec.GPU_METRICS}
        self._gpu_t = np.full(topo.n_gpus, np.nan)
        self._node = {m: np.full(topo.n_nodes, np.nan) for m in codec.NODE_METRICS}
        self._node_t = np.full(topo.n_nodes, np.nan)
        self._plant: dict[str, dict[str, NDArray[np.float64]]] = {}
        self._gpu_start = topo.segment_starts("gpu", "node")
        self._t_s = float("nan")
        self._any = threading.Event()
        self.rejected: Counter[str] = Counter()
        self.rollups = 0
        self.frames = 0
        self.latency_s: deque[float] = deque(maxlen=keep_latency)
        self.epochs: dict[int, int] = {}  # hall -> epoch (lease revision) of the tracker serving it
        self.epoch_change_s: dict[int, float] = {}  # hall -> perf counter when a new tracker's rollup came
        self.link.call(self._start())

    @property
    def topology(self) -> Topology:
        return self.topo

    async def _start(self) -> None:
        nc = self.link.nc
        js = nc.jetstream()
        site = self.topo.site_name
        await ensure_streams(js, site)
        await nc.subscribe(f"pp.rollup.{subjects.token(site)}.>", cb=self._on_rollup)
        await nc.subscribe(subjects.plant_subject(site), cb=self._on_plant)
        for hall in self.topo.hall_names:  # the newest picture already on the bus
            try:
                raw = await js.get_last_msg(subjects.rollup_stream(site), subjects.rollup_subject(site, hall))
                self._take_rollup(raw.data or b"")
            except NotFoundError:
                pass

    async def _on_rollup(self, msg: Msg) -> None:
        self._take_rollup(msg.data)

    async def _on_plant(self, msg: Msg) -> None:
        try:
            _, t_s, _, levels = codec.decode_plant(msg.data)
        except codec.FrameError as exc:
            self.rejected[exc.reason] += 1
            return
        with self._lock:
            self._plant = levels
            self._plant_t = t_s
        self._any.set()

    def _take_rollup(self, data: bytes) -> None:
        try:
            r = codec.HallRollup.decode(data)
        except codec.FrameError as exc:
            self.rejected[exc.reason] += 1
            return
        if self.epochs.get(r.hall, r.epoch) != r.epoch:
            self.epoch_change_s[r.hall] = perf_counter_s()
        self.epochs[r.hall] = r.epoch
        f = r.frames
        if not f.size:
            return
        nodes = f["node"].astype(np.int64)
        if nodes.max() >= self.topo.n_nodes:
            self.rejected["unknown_node"] += int(f.size)
            return
        k = int(f["n_gpus"][0])
        gidx = (self._gpu_start[nodes][:, None] + np.arange(k)[None, :]).reshape(-1)
        now = self.clock.now_s()
        with self._lock:
            for m in codec.gpu_fields(f.dtype):
                self._gpu[m][gidx] = f[f"gpu.{m}"].reshape(-1)
            self._gpu_t[gidx] = np.repeat(f["t_s"], k)
            for m in codec.node_fields(f.dtype):
                self._node[m][nodes] = f[f"node.{m}"]
            self._node_t[nodes] = f["t_s"]
            self._t_s = float(np.nanmax([self._t_s, float(f["t_s"].max())]))
            self.rollups += 1
            self.frames += int(f.size)
            self.latency_s.extend((now - f["sent_s"]).tolist())
        self._any.set()

    def reported_share(self) -> float:
        """Share of the site's GPUs heard from at least once."""
        with self._lock:
            return float(np.isfinite(self._gpu_t).mean())

    def read(self) -> Frame:
        if not self._any.wait(self.first_timeout_s):
            raise SourceError(f"no rollup or plant frame from the bus within {self.first_timeout_s:.0f} s")
        with self._lock:
            reported = np.isfinite(self._gpu_t)
            gpu: dict[str, NDArray[np.generic]] = {m: a.copy() for m, a in self._gpu.items()}
            gpu["t_s"] = np.where(reported, self._gpu_t, -np.inf)
            gpu["_reported"] = reported
            node_rep = np.isfinite(self._node_t)
            node: dict[str, NDArray[np.generic]] = {m: a.copy() for m, a in self._node.items()}
            node["t_s"] = np.where(node_rep, self._node_t, -np.inf)
            node["_reported"] = node_rep
            levels: dict[str, dict[str, NDArray[np.generic]]] = {"gpu": gpu, "node": node}
            for level, metrics in self._plant.items():
                levels[level] = {m: a.copy() for m, a in metrics.items()}
            t_s = self._t_s if np.isfinite(self._t_s) else getattr(self, "_plant_t", float("nan"))
        for level in ("gpu", "node"):
            lv = levels[level]
            for m in ("throttle_reasons", "last_xid"):
                if m in lv:
                    lv[m] = np.where(np.isfinite(lv[m]), lv[m], 0).astype(np.int64)
        return Frame(t_s=float(t_s), source="bus", levels=levels)


class BusActuator(_OnBus):
    """Sends commands to the devices' agents (request/reply on ``pp.cmd.<site>.<hall>.<device>``).

    GPU caps are split per node (the node's agent applies them through NVML, clipped to the card's limits);
    battery setpoints go to ``bess-<unit>`` in the unit's hall. A device that does not answer within
    ``timeout_s`` is reported as not applied. Every command and its result is appended to ``audit`` (and to
    ``audit_path`` as JSON lines when given).
    """

    def __init__(
        self,
        url: str,
        site: SiteConfig,
        topology: Topology | None = None,
        *,
        timeout_s: float = 2.0,
        clock: Clock | None = None,
        audit_path: Path | None = None,
        link: BusLink | None = None,
    ) -> None:
        super().__init__(url, site, topology, clock, link, "powerplane-bus-actuator")
        self.timeout_s = float(timeout_s)
        self.audit: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.audit_path = audit_path
        self._bess_hall = [b.hall for b in site.bess]

    def apply(self, commands: Sequence[Command]) -> list[CommandResult]:
        results = self.link.call(self._apply_all(list(commands)), self.timeout_s * 4 + 5)
        for c, r in zip(commands, results, strict=True):
            rec: dict[str, Any] = {"t_s": self.clock.now_s(), "command": c.kind, "applied": r.applied}
            rec |= {"clipped": r.clipped, "detail": r.detail}
            self.audit.append(rec)
            if self.audit_path is not None:
                with self.audit_path.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        return results

    async def _apply_all(self, commands: list[Command]) -> list[CommandResult]:
        return list(await asyncio.gather(*(self._apply_one(c) for c in commands)))

    async def _request(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            msg = await self.link.nc.request(subject, json.dumps({"v": 1, **body}).encode(), timeout=self.timeout_s)
            out: dict[str, Any] = json.loads(msg.data)
            return out
        except Exception as exc:  # no responder, timeout, bus down: the command was not applied
            return {"applied": False, "clipped": False, "detail": f"{subject}: no answer ({type(exc).__name__})"}

    async def _apply_one(self, c: Command) -> CommandResult:
        site, topo = self.topo.site_name, self.topo
        if isinstance(c, BessSetpoint):
            if not 0 <= c.unit < len(self._bess_hall):
                return CommandResult(c, False, detail=f"unknown battery unit {c.unit}")
            if not np.isfinite(c.power_w):
                return CommandResult(c, False, detail="setpoint is not a finite number")
            subject = subjects.cmd_subject(site, self._bess_hall[c.unit], subjects.bess_device(c.unit))
            r = await self._request(subject, {"kind": "bess_setpoint", "power_w": float(c.power_w)})
            return CommandResult(c, bool(r.get("applied")), bool(r.get("clipped")), str(r.get("detail", "")))
        if isinstance(c, GpuPowerCap):
            gpus = np.asarray(c.gpus, dtype=np.int64)
            if gpus.size == 0:
                return CommandResult(c, True, detail="no GPUs")
            if gpus.min() < 0 or gpus.max() >= topo.n_gpus:
                return CommandResult(c, False, detail="GPU index out of range")
            caps = np.broadcast_to(np.asarray(c.cap_w, dtype=np.float64), gpus.shape)
            if np.any(caps[np.isfinite(caps)] <= 0) or np.any(np.isinf(caps)):
                return CommandResult(c, False, detail="caps must be positive watts (NaN restores the default)")
            node = topo.gpu_node[gpus]
            hall = topo.parent_index_cached("node", "hall")[node]
            order = np.argsort(node, kind="stable")
            cut = np.flatnonzero(np.diff(node[order])) + 1
            reqs = []
            for grp in np.split(order, cut):
                n = int(node[grp[0]])
                subject = subjects.cmd_subject(site, topo.hall_names[int(hall[grp[0]])], topo.node_names[n])
                body = {
                    "kind": "gpu_power_cap",
                    "gpus": topo.gpu_local_index[gpus[grp]].tolist(),
                    "cap_w": [None if not np.isfinite(x) else float(x) for x in caps[grp]],
                }
                reqs.append(self._request(subject, body))
            rs = await asyncio.gather(*reqs)
            ok = all(bool(r.get("applied")) for r in rs)
            failed = [str(r.get("detail")) for r in rs if not r.get("applied")]
            detail = f"{len(rs)} nodes" + (f"; refused: {'; '.join(failed[:3])}" if failed else "")
            return CommandResult(c, ok, any(bool(r.get("clipped")) for r in rs), detail)
        return CommandResult(c, False, detail=f"{type(c).__name__} is not carried over the bus")
