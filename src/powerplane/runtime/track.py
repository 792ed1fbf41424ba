"""`powerplane track`: read a source every cycle, validate and roll up, show a live table and serve /metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from powerplane.config.schema import SiteConfig
from powerplane.core.clock import perf_counter_s
from powerplane.core.errors import SourceError
from powerplane.sources.base import Source
from powerplane.telemetry.exposition import MetricsServer, SnapshotCollector
from powerplane.telemetry.ring import GpuRing
from powerplane.telemetry.snapshot import Snapshot
from powerplane.telemetry.tracker import Tracker


@dataclass
class TrackOptions:
    source: str
    scenario: str | None = None
    targets: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    interval_s: float = 1.0
    speed: float = 1.0
    seed: int = 0
    fake_nvml: bool = False
    timeout_s: float = 5.0
    history: Path | None = None
    ring_window_s: float = 600.0


class Tracking:
    """A source wired to a tracker (and optionally history); one :meth:`cycle` per interval."""

    def __init__(
        self,
        source: Source,
        site: SiteConfig | None,
        gpu_job: Callable[[], NDArray[np.int64] | None],
        extra: Callable[[], dict[str, Any]] | None = None,
        history: Any = None,
        ring_window_s: float = 600.0,
        interval_s: float = 1.0,
    ) -> None:
        self.source = source
        self.site = site
        self._gpu_job = gpu_job
        self._extra = extra
        topo = source.topology
        ring = GpuRing.for_window(topo.n_gpus, ring_window_s, 1.0 / max(interval_s, 1e-3))
        self.tracker = Tracker(topo, site, ring=ring, history=history)
        self.history = history
        self.collector = SnapshotCollector(topo, site.name if site else None)
        self.cycle_ms: list[float] = []

    def cycle(self) -> Snapshot:
        t0 = perf_counter_s()
        frame = self.source.read()
        last = getattr(self.source, "last", None)  # dcgm: what the scrape itself rejected (unknown GPUs, bad lines)
        rejected: Counter[str] = Counter(getattr(last, "rejected", None) or {})
        snap = self.tracker.ingest(frame, self._gpu_job(), rejected)
        self.cycle_ms.append((perf_counter_s() - t0) * 1e3)
        del self.cycle_ms[:-1000]
        return snap

    def render_metrics(self) -> str:
        if self.tracker.last is None:
            raise LookupError("no snapshot yet")
        return self.collector.render(self.tracker.last, self.site.tariff.currency if self.site else "")

    def extra(self) -> dict[str, Any]:
        return self._extra() if self._extra else {}

    def close(self) -> None:
        self.source.close()
        if self.history is not None:
            self.history.close()


def _twin_tracking(opts: TrackOptions, history_factory: Callable[[Any], Any] | None) -> Tracking:
    from powerplane.config import load_scenario
    from powerplane.sources.base import TwinSource
    from powerplane.twin.twin import Twin

    site, path = load_scenario(opts.scenario or "small")
    twin = Twin(site, path, seed=opts.seed, dt_s=1.0)
    steps = max(1, round(opts.interval_s * opts.speed))
    src = TwinSource(twin, steps_per_read=steps)
    hist = history_factory(src.topology) if history_factory else None
    return Tracking(
        src,
        site,
        lambda: twin.workload.gpu_job,
        history=hist,
        ring_window_s=opts.ring_window_s,
        interval_s=opts.interval_s,
    )


def resolve_targets(specs: list[str]) -> list[str]:
    """Each spec is a file listing targets (one per line), a URL, ``host[:port]`` or ``file://PATH`` of a saved
    scrape. A path to a file that is not a target list (it holds exporter text) is taken as a saved scrape."""
    from powerplane.sources.dcgm import normalize_target, read_targets

    out: list[str] = []
    for spec in specs:
        path = Path(spec)
        if "://" not in spec and path.is_file():
            head = path.read_text(errors="replace")[:4096]
            if "DCGM_" in head or "# TYPE" in head or "# HELP" in head:
                out.append("file://" + str(path.resolve()))
            else:
                out.extend(read_targets(path))
        else:
            out.append(normalize_target(spec))
    if not out:
        raise SourceError("no dcgm targets given")
    return out


def _dcgm_tracking(opts: TrackOptions, history_factory: Callable[[Any], Any] | None) -> Tracking:
    from powerplane.config import load_scenario
    from powerplane.sources.dcgm import DcgmScraper, DcgmSource
    from powerplane.sources.discover import discover_topology
    from powerplane.topology import Topology

    if not opts.targets:
        raise SourceError("--source dcgm needs --targets (a file of URLs, comma-separated URLs, or file://PATH)")
    scraper = DcgmScraper(resolve_targets(opts.targets), timeout_s=opts.timeout_s)
    site: SiteConfig | None = None
    if opts.scenario:
        site, _ = load_scenario(opts.scenario)
        topo = Topology.from_site(site)
    else:
        topo = discover_topology(scraper)
    src = DcgmSource(topo, scraper)

    def status() -> dict[str, Any]:
        last = src.last
        if last is None:
            return {}
        targets = [
            {
                "target": t.target,
                "status": t.status,
                "latency_s": round(t.latency_s, 4),
                "samples": t.n_samples,
                **({"error": t.error} if t.error else {}),
            }
            for t in last.targets
        ]
        return {
            "job_names": {str(k): v for k, v in src.job_names.items()},
            "targets": targets,
            "failed_targets": [t["target"] for t in targets if t["status"] != "ok"],
            "samples": last.n_samples,
        }

    hist = history_factory(topo) if history_factory else None
    return Tracking(
        src, site, src.gpu_job, extra=status, history=hist, ring_window_s=opts.ring_window_s, interval_s=opts.interval_s
    )


def build_tracking(opts: TrackOptions) -> Tracking:
    """Wire the requested source. Raises SourceError/ConfigError with a clear message when it cannot."""
    history_factory: Callable[[Any], Any] | None = None
    if opts.history is not None:
        from powerplane.store.history import HistoryStore

        hist_path = opts.history

        def make_history(topo: Any) -> Any:
            return HistoryStore(hist_path, topo)

        history_factory = make_history

    if opts.source == "twin":
        return _twin_tracking(opts, history_factory)
    if opts.source == "replay":
        from powerplane.sources.replay import ReplaySource

        if opts.run_dir is None:
            raise SourceError("--source replay needs the directory of a `powerplane simulate` run")
        src = ReplaySource(opts.run_dir, speed=opts.speed)
        site = getattr(src, "site", None)
        hist = history_factory(src.topology) if history_factory else None
        return Tracking(
            src, site, lambda: None, history=hist, ring_window_s=opts.ring_window_s, interval_s=opts.interval_s
        )
    if opts.source == "nvml":
        from powerplane.sources import nvml

        nv: Any = None
        clock = None
        if opts.fake_nvml:
            from powerplane.core.clock import WallClock
            from powerplane.sources.fake_nvml import FakeNvml

            clock = WallClock()
            nv = FakeNvml.demo(clock)
        nsrc = nvml.NvmlSource(nvml=nv, clock=clock)
        hist = history_factory(nsrc.topology) if history_factory else None
        return Tracking(
            nsrc, None, lambda: None, history=hist, ring_window_s=opts.ring_window_s, interval_s=opts.interval_s
        )
    if opts.source == "dcgm":
        return _dcgm_tracking(opts, history_factory)
    raise SourceError(f"unknown source {opts.source!r}; valid: twin, dcgm, nvml, replay")


def snapshot_json(tr: Tracking, snap: Snapshot) -> dict[str, Any]:
    """The rollups of one snapshot as plain JSON: site, halls, racks, jobs, coverage, rejected values."""
    topo = tr.source.topology

    def f(x: Any) -> float | None:
        v = float(x)
        return v if np.isfinite(v) else None

    def level_rows(level: str) -> list[dict[str, Any]]:
        roll = snap.rollups.get(level, {})
        names = topo.names(level)  # type: ignore[arg-type]
        rows = []
        for i, name in enumerate(names):
            row: dict[str, Any] = {"name": name}
            for key, r in roll.items():
                base = key.replace(".", "_")
                if key.endswith("power_w") or key.endswith("current_a"):
                    row[f"{base}_sum"] = f(r.sum[i])
                if key.endswith("temp_c"):
                    row[f"{base}_max"] = f(r.max[i])
                if key.endswith("util_pct"):
                    row[f"{base}_mean"] = f(r.mean[i])
                if key == "gpu.power_w":
                    row["gpu_coverage"] = f(r.coverage[i])
            rows.append(row)
        return rows

    site_vals = snap.levels.get("site")
    site: dict[str, Any] = {}
    if site_vals is not None:
        site = {k: f(v[0]) for k, v in site_vals.values.items()}
    for row in level_rows("site"):
        site.update({k: v for k, v in row.items() if k != "name"})
    coverage = {
        lvl: f(np.mean(snap.rollups[lvl]["gpu.power_w"].coverage))
        for lvl in ("node", "rack", "row", "hall", "site")
        if "gpu.power_w" in snap.rollups.get(lvl, {})
    }
    jobs = [
        {"job": int(j), "power_w": f(p), "gpu_coverage": f(c), "energy_kwh": f(e), "cost": f(k)}
        for j, p, c, e, k in zip(
            snap.job_ids, snap.job_power_w, snap.job_coverage, snap.job_energy_kwh, snap.job_cost, strict=True
        )
    ]
    return {
        "t_s": snap.t_s,
        "source": snap.source,
        "seq": snap.seq,
        "gpus": topo.n_gpus,
        "site": site,
        "halls": level_rows("hall"),
        "racks": level_rows("rack"),
        "jobs": jobs,
        "coverage": coverage,
        "rejected": dict(snap.rejected),
        "rejected_total": dict(snap.rejected_total),
        **tr.extra(),
    }


def run_live(
    tr: Tracking,
    interval_s: float,
    port: int | None,
    host: str,
    duration_s: float | None,
    on_snapshot: Callable[[Snapshot], None],
    announce: Callable[[str], None] | None = None,
) -> None:
    """Cycle until Ctrl-C (or ``duration_s``), serving /metrics when ``port`` is given (0: any free port)."""
    server = MetricsServer(tr.render_metrics, host, port).start() if port is not None else None
    if server is not None and announce is not None:
        announce(f"http://{host}:{server.port}/metrics")
    start = time.monotonic()
    next_t = start
    try:
        while duration_s is None or time.monotonic() - start < duration_s:
            snap = tr.cycle()
            on_snapshot(snap)
            next_t += interval_s
            time.sleep(max(0.0, next_t - time.monotonic()))
    finally:
        if server is not None:
            server.close()
