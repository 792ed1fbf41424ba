"""Online log mining: Drain3 templates, anomaly scores, correlation to GPU, node and job; sources and a store.

A line goes through :class:`LogMiner`:

1. its header is split off (:func:`powerplane.ops.xid.parse_prefix`: syslog, RFC 5424, journal, dmesg, LogHub);
2. numbers, hex, PCI ids and UUIDs in the message are masked to ``<*>``; the masked message is the key of a
   template cache, so Drain3 (``drain3.TemplateMiner``) sees each distinct *shape* once and every later line of
   that shape costs one dictionary lookup. Drain3 still owns the clustering (and generalizes templates as new
   shapes arrive); the miner keeps its own per-template counts, since cache hits bypass Drain3;
3. the line is scored: a template first seen after the warm-up (*new*), a template whose share of all lines is
   tiny (*rare*), a template whose count in the current time window is far above its own moving baseline
   (*burst*), and a header severity of critical or worse. The score is the strongest of these, in [0, 1];
4. it is tied to a node (header host, or a known hostname in the text), a GPU (an Xid's PCI bus id or a PCI id,
   ``GPU n`` or GPU UUID in the text, resolved through the topology and a host -> {PCI bus id: GPU index}
   map), and a job (through a GPU -> job array the caller keeps current).

Sources: :class:`FileTailer` (follows appends, rotation and truncation), :class:`SyslogUdpListener` (RFC 3164
and 5424 datagrams on loopback) and :func:`render_twin_xids` (the twin's injected faults as kernel-log lines).
:class:`~powerplane.ops.logstore.LogStore` keeps events in an embedded DuckDB file with a token index for
full-text search (see its module).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.core.clock import Clock, WallClock
from powerplane.ops.xid import ACTION_RANK, Action, XidRecord, normalize_pci, parse_prefix, parse_xid
from powerplane.topology import Topology

# Masking: every word part from its first digit on (numbers, addresses, PCI and hex ids, ``eth0`` -> ``eth<*>``),
# ending on a word character so trailing punctuation stays. A pattern that starts with a digit class lets the regex
# engine skip ahead in C: ~2 us a line, five times faster than masking UUIDs/hex/numbers with separate alternatives.
_MASK_RE = re.compile(r"\d[\w.:-]*\w|\d")
WILDCARD = "<*>"
_PCI_TEXT = re.compile(r"\b((?:[0-9a-fA-F]{4,8}):[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\b")
_GPU_TEXT = re.compile(
    r"\bGPU[ -]?(?:(\d{1,2})\b|([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}))"
)
_SEVERITY_TEXT = re.compile(
    r"\b(?:(panic|fatal|critical|emerg\w*|kernel bug|oops|fallen off)|"
    r"(errors?|fail\w*|fault\w*|exception|timed? ?out|abort\w*|denied|refused|segfault|corrupt\w*)|(warn\w*))\b",
    re.I,
)
_ACTION_SEVERITY = {
    Action.IGNORE: 5,
    Action.RESTART_APP: 3,
    Action.RESET_GPU: 3,
    Action.WORKFLOW_XID_48: 3,
    Action.WORKFLOW_NVLINK_ERR: 3,
    Action.WORKFLOW_NVLINK5_ERR: 3,
    Action.XID_154_EVAL: 3,
    Action.RESTART_BM: 2,
    Action.CHECK_MECHANICALS: 2,
    Action.CONTACT_SUPPORT: 2,
}
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

# A DGX H100 / HGX baseboard's PCI bus ids by GPU index: the twin's hosts are given these.
DGX_PCI_BUS_IDS = (
    "0000:18:00", "0000:2a:00", "0000:3a:00", "0000:5d:00", "0000:9a:00", "0000:ab:00", "0000:ba:00", "0000:db:00"
)  # fmt: skip


def mask(message: str) -> str:
    """The message with its variable parts replaced by ``<*>``.

    >>> mask("eth0: link up at 1000 Mbps, pci 0000:3b:00.0 id 0x1f, session-42.scope: done")
    'eth<*>: link up at <*> Mbps, pci <*> id <*>, session-<*>: done'
    """
    return _MASK_RE.sub(WILDCARD, message)


@dataclass(slots=True)
class LogEvent:
    """One ingested line, mined, scored and correlated."""

    seq: int  # line number in this miner, from 0
    t_s: float | None
    host: str | None
    gpu: int  # global GPU index, -1 when unknown
    job: int  # -1 when unknown or idle
    pci_bus_id: str | None
    template_id: int
    template: str
    severity: int  # syslog 0 (emerg) .. 7 (debug)
    anomaly_score: float  # [0, 1]
    reasons: str  # comma-separated: new, rare, burst, severity
    line: str
    xid: XidRecord | None = None
    label: str | None = None  # ground truth from a labelled dataset (LogHub), never used for scoring
    text_offset: int = 0  # where the program tag (or the message) starts in ``line``: the indexed text

    @property
    def action(self) -> str | None:
        return None if self.xid is None else self.xid.action.value


def twin_pci_map(topo: Topology) -> dict[str, dict[str, int]]:
    """host -> {PCI bus id: GPU index in the node} for a twin topology (which has no PCI ids): the HGX layout."""
    out: dict[str, dict[str, int]] = {}
    per_node = np.bincount(topo.gpu_node, minlength=topo.n_nodes)
    for n, name in enumerate(topo.node_names):
        out[name] = {_twin_bus_id(i): i for i in range(int(per_node[n]))}
    return out


def _twin_bus_id(local: int) -> str:
    return DGX_PCI_BUS_IDS[local] if local < len(DGX_PCI_BUS_IDS) else f"0001:{local:02x}:00"


class Correlator:
    """Resolves a line's node, GPU and job from what it says."""

    def __init__(
        self,
        topo: Topology | None = None,
        pci_map: dict[str, dict[str, int]] | None = None,
        gpu_job: NDArray[np.int64] | None = None,
    ) -> None:
        self.gpu_job = gpu_job
        self.pci_map = {h: {normalize_pci(k): v for k, v in m.items()} for h, m in (pci_map or {}).items()}
        self.node_of: dict[str, int] = {}
        self.node_gpus: list[NDArray[np.int64]] = []
        self.uuid_gpu: dict[str, int] = {}
        self._host_re: re.Pattern[str] | None = None
        if topo is not None:
            self.node_of = {h: i for i, h in enumerate(topo.node_names)}
            order = np.lexsort((topo.gpu_local_index, topo.gpu_node))
            starts = np.searchsorted(topo.gpu_node[order], np.arange(topo.n_nodes + 1))
            self.node_gpus = [order[starts[n] : starts[n + 1]].astype(np.int64) for n in range(topo.n_nodes)]
            self.uuid_gpu = {u.lower(): i for i, u in enumerate(topo.gpu_uuids)}
            names = sorted(topo.node_names, key=len, reverse=True)
            self._host_re = re.compile(r"\b(" + "|".join(re.escape(h) for h in names) + r")\b") if names else None

    def host_in(self, message: str) -> str | None:
        if self._host_re is None:
            return None
        m = self._host_re.search(message)
        return None if m is None else m.group(1)

    def gpu_of(self, host: str | None, pci: str | None, local: int | None, uuid: str | None) -> int:
        """The global GPU index, -1 when it cannot be resolved."""
        if uuid is not None:
            return self.uuid_gpu.get(uuid.lower(), -1)
        if host is None:
            return -1
        if pci is not None:
            local = self.pci_map.get(host, {}).get(pci)
        n = self.node_of.get(host)
        if n is None and "." in host:
            n = self.node_of.get(host.split(".", 1)[0])
        if n is None or local is None:
            return -1
        gpus = self.node_gpus[n]
        return int(gpus[local]) if 0 <= local < len(gpus) else -1

    def job_of(self, gpu: int) -> int:
        if gpu < 0 or self.gpu_job is None or gpu >= len(self.gpu_job):
            return -1
        return int(self.gpu_job[gpu])


@dataclass(slots=True)
class _Shape:
    cid: int  # Drain3 cluster id
    created: bool  # this shape created its cluster
    severity: int  # from the message's words
    has_pci: bool
    has_gpu: bool


@dataclass(slots=True)
class _TemplateStats:
    template: str
    count: int = 0
    window: int = -(2**62)  # index of the time window ``in_window`` counts
    in_window: int = 0
    baseline: float = 0.0  # EWMA of the per-window count (empty windows count as 0)
    windows: int = 0  # finished windows seen (the baseline is seeded by the first)
    first_seq: int = 0


class LogMiner:
    """Online template mining, anomaly scoring and correlation. Not thread-safe: feed it from one thread.

    Parameters: ``warmup_lines`` before new/rare templates count as anomalies; ``rare_fraction`` [share of all
    lines] under which a template is rare; ``window_s`` [s] of the burst counter, ``burst_factor`` over the
    template's own EWMA baseline (``baseline_alpha`` per window), and ``burst_min`` lines at least.
    """

    def __init__(
        self,
        correlator: Correlator | None = None,
        *,
        year: int | None = None,
        clock: Clock | None = None,
        sim_th: float = 0.4,
        depth: int = 4,
        warmup_lines: int = 2000,
        rare_fraction: float = 1e-3,
        window_s: float = 10.0,
        burst_factor: float = 8.0,
        burst_min: int = 20,
        baseline_alpha: float = 0.1,
        cache_size: int = 500_000,
    ) -> None:
        from drain3 import TemplateMiner
        from drain3.template_miner_config import TemplateMinerConfig

        cfg = TemplateMinerConfig()
        cfg.drain_sim_th = sim_th
        cfg.drain_depth = depth
        cfg.profiling_enabled = False
        cfg.parametrize_numeric_tokens = True
        self.drain = TemplateMiner(persistence_handler=None, config=cfg)
        self.correlator = correlator or Correlator()
        if year is None:
            import time as _time

            year = _time.gmtime((clock or WallClock()).now_s()).tm_year
        self.year = year
        self.warmup_lines = warmup_lines
        self.rare_fraction = rare_fraction
        self.window_s = window_s
        self.burst_factor = burst_factor
        self.burst_min = burst_min
        self.baseline_alpha = baseline_alpha
        self.cache_size = cache_size
        self._cache: dict[str, _Shape] = {}
        self.templates: dict[int, _TemplateStats] = {}
        self.n_lines = 0
        self.drain_calls = 0

    # -- mining ------------------------------------------------------------------------------------------------------
    def _shape(self, key: str, msg: str) -> _Shape:
        """What a masked message shape maps to; Drain3 runs here, once per shape."""
        res = self.drain.add_log_message(key)
        self.drain_calls += 1
        cid = int(res["cluster_id"])
        stats = self.templates.get(cid)
        if stats is None:
            self.templates[cid] = _TemplateStats(res["template_mined"], first_seq=self.n_lines)
        else:
            stats.template = res["template_mined"]
        sm = _SEVERITY_TEXT.search(msg)  # numbers are masked alike, so the words (and severity) are the shape's
        sev = 6 if sm is None else (2 if sm.group(1) else 3 if sm.group(2) else 4)
        shape = _Shape(cid, res["change_type"] == "cluster_created", sev, _PCI_TEXT.search(msg) is not None,
                       "GPU" in msg)  # fmt: skip
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = shape
        return shape

    def process(
        self,
        line: str,
        t_s: float | None = None,
        *,
        host: str | None = None,
        gpu: int | None = None,
        job: int | None = None,
    ) -> LogEvent:
        """Mine, score and correlate one line. ``t_s`` is used when the line has no time of its own (a receive
        time); ``host``/``gpu``/``job`` override correlation (the twin knows them)."""
        p = parse_prefix(line, self.year)
        msg = p.message
        key = _MASK_RE.sub(WILDCARD, msg)
        if p.app is not None:
            key = p.app + ": " + key
        shape = self._cache.get(key)
        created = False
        if shape is None:
            shape = self._shape(key, msg)
            created = shape.created
        cid = shape.cid
        st = self.templates[cid]
        st.count += 1
        seq = self.n_lines
        self.n_lines += 1

        # -- scoring
        score, reasons = 0.0, []
        warm = seq >= self.warmup_lines
        if warm:
            if created:
                score, reasons = 1.0, ["new"]
            elif st.count < self.rare_fraction * self.n_lines:
                score = min(1.0, 0.5 + 0.25 * math.log10(self.rare_fraction * self.n_lines / st.count))
                reasons.append("rare")
        t = p.t_s if p.t_s is not None else (t_s if t_s is not None else p.uptime_s)
        if t is not None:
            w = int(t // self.window_s)
            if w != st.window:
                a = self.baseline_alpha
                if st.windows:  # fold the finished window (and any empty ones after it) into the baseline
                    st.baseline = (1 - a) * st.baseline + a * st.in_window
                    if w - st.window > 1:
                        st.baseline *= (1 - a) ** min(w - st.window - 1, 1000)
                elif st.window > -(2**61):
                    st.baseline = float(st.in_window)  # the first full window seeds it
                st.windows += st.window > -(2**61)
                st.window, st.in_window = w, 0
            st.in_window += 1
            c = st.in_window
            if warm and st.windows and c >= self.burst_min:
                ref = self.burst_factor * max(st.baseline, 1.0)
                if c >= ref:
                    score = max(score, min(1.0, 0.5 * c / ref))
                    reasons.append("burst")

        # -- correlation
        xrec = parse_xid(msg) if "NVRM: Xid" in msg else None
        h = host or p.host
        corr = self.correlator
        if h is None:
            h = corr.host_in(msg)
        pci = None
        if xrec is not None:
            pci = xrec.pci_bus_id
            xrec.t_s, xrec.uptime_s, xrec.host = p.t_s if p.t_s is not None else t_s, p.uptime_s, h
        elif shape.has_pci and (m := _PCI_TEXT.search(msg)) is not None:
            pci = normalize_pci(m.group(1))
        if gpu is None:
            gpu = -1
            if pci is not None:
                gpu = corr.gpu_of(h, pci, None, None)
            elif shape.has_gpu and (g := _GPU_TEXT.search(msg)) is not None:
                local = None if g.group(1) is None else int(g.group(1))
                uuid = None if g.group(2) is None else "GPU-" + g.group(2)
                gpu = corr.gpu_of(h, None, local, uuid)
        if job is None:
            job = corr.job_of(gpu) if gpu >= 0 else -1

        # -- severity
        if xrec is not None:
            sev = _ACTION_SEVERITY[xrec.action]
        elif p.severity is not None:
            sev = p.severity
        else:
            sev = shape.severity
        if sev <= 2 and score < 0.6:
            score = 0.6
            reasons.append("severity")

        text = line.rstrip("\r\n")
        off = len(text) - len(msg) if text.endswith(msg) else 0
        if p.app is not None and off > 0:
            a = text.rfind(p.app, 0, off)
            off = a if a >= 0 else off
        return LogEvent(
            seq, p.t_s if p.t_s is not None else t_s, h, gpu, job, pci, cid, st.template, sev, score,
            ",".join(reasons), text, xrec, p.label, max(off, 0),
        )  # fmt: skip

    def process_lines(self, lines: Iterable[str], t_s: float | None = None) -> list[LogEvent]:
        proc = self.process
        return [proc(line, t_s) for line in lines if line.strip()]

    def process_xid_events(self, events: Iterable[Any], topo: Topology) -> list[LogEvent]:
        """The twin's injected faults (``XidEvent(t_s, job, gpu, xid)``) as kernel-log lines, GPU and job given."""
        out = []
        for ev, line in zip(events, render_twin_xids(events, topo), strict=True):
            out.append(self.process(line, ev.t_s, gpu=int(ev.gpu), job=int(ev.job)))
        return out

    # -- summaries ---------------------------------------------------------------------------------------------------
    def template_table(self) -> list[dict[str, Any]]:
        """Every template, most frequent first: id, template (Drain3's current text), count, first line."""
        order = sorted(
            (cid for cid, s in self.templates.items() if s.count), key=lambda c: (-self.templates[c].count, c)
        )
        return [
            {"id": c, "template": self.templates[c].template, "count": self.templates[c].count,
             "first_seq": self.templates[c].first_seq}
            for c in order
        ]  # fmt: skip


def worst_action(actions: Iterable[str]) -> str | None:
    """The most disruptive of a set of action bucket names."""
    best: Action | None = None
    for a in actions:
        act = Action(a)
        if best is None or ACTION_RANK[act] > ACTION_RANK[best]:
            best = act
    return None if best is None else best.value


# ----------------------------------------------------------------------------------------------------------------------
# Sources


def render_twin_xids(events: Iterable[Any], topo: Topology) -> list[str]:
    """The twin's ``XidEvent(t_s, job, gpu, xid)`` as syslog kernel lines from the GPU's node (HGX bus ids)."""
    import time as _time

    from powerplane.ops.xid import render_xid_line

    out = []
    for ev in events:
        gpu = int(ev.gpu)
        host = topo.node_names[int(topo.gpu_node[gpu])]
        tm = _time.gmtime(float(ev.t_s))
        stamp = f"{_time.strftime('%b', tm)} {tm.tm_mday:2d} {_time.strftime('%H:%M:%S', tm)}"
        pci = _twin_bus_id(int(topo.gpu_local_index[gpu]))
        pid = 10_000 + int(ev.job) if int(ev.job) >= 0 else None
        out.append(f"{stamp} {host} kernel: {render_xid_line(int(ev.xid), pci, pid=pid, process='python3')}")
    return out


class FileTailer:
    """Follows a log file like ``tail -F``: new complete lines on each :meth:`poll`; survives rotation (the path
    now names another file: the old one is read to its end first) and truncation (read again from the start)."""

    def __init__(self, path: str | Path, from_start: bool = True, max_bytes: int = 64 << 20) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self.max_bytes = max_bytes
        self._f: Any = None
        self._ino: int | None = None
        self._buf = b""

    def _open(self, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        if at_end:
            f.seek(0, os.SEEK_END)
        self._f, self._ino, self._buf = f, st.st_ino, b""
        return True

    def _read(self) -> list[str]:
        data = self._f.read(self.max_bytes)
        if not data:
            return []
        data = self._buf + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._buf = data
            return []
        self._buf = data[cut + 1 :]
        return data[:cut].decode("utf-8", "replace").split("\n")

    def poll(self) -> list[str]:
        if self._f is None and not self._open(at_end=not self.from_start):
            return []
        lines: list[str] = []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._read()  # rotated away, the new file not there yet: finish the old one
        if st.st_ino != self._ino:
            lines = self._read()
            if self._buf:
                lines.append(self._buf.decode("utf-8", "replace"))
            self._f.close()
            self._open(at_end=False)
        elif st.st_size < self._f.tell():
            self._f.seek(0)
            self._buf = b""
        lines.extend(self._read())
        return lines

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class SyslogUdpListener:
    """Receives syslog datagrams (RFC 3164 or 5424) on a loopback UDP port. ``port=0`` picks a free one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, clock: Clock | None = None) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the syslog listener binds loopback only, not {host!r}")
        self.clock = clock or WallClock()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.port = self.address[1]
        self._q: queue.SimpleQueue[tuple[float, str]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SyslogUdpListener:
        self._thread = threading.Thread(target=self._run, name="syslog-udp", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                break
            t = self.clock.now_s()
            for line in data.decode("utf-8", "replace").splitlines():
                if line.strip():
                    self._q.put((t, line))

    def poll(self) -> list[tuple[float, str]]:
        """(receive time, line) of every line received since the last poll."""
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._q.get_nowait())
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> SyslogUdpListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


from powerplane.ops.logstore import LogStore  # noqa: E402 - re-exported: the store lives in its own module


def pump(lines: Iterable[str | tuple[float, str]], miner: LogMiner, store: LogStore | None) -> list[LogEvent]:
    """Run lines (or (receive time, line) pairs from :class:`SyslogUdpListener`) through the miner into the store."""
    events = []
    for item in lines:
        if isinstance(item, tuple):
            events.append(miner.process(item[1], item[0]))
        elif item.strip():
            events.append(miner.process(item))
    if store is not None:
        store.add(events)
    return events
