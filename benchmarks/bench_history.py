"""Benchmark the DuckDB history: `texas` (10,240 GPUs) snapshots at 10 Hz into a HistoryStore.

Snapshots are fabricated with NumPy (GPU power, temperature and utilisation with a few flagged readings, node
power, site meters, ~60 jobs, rollups to node, rack, row, hall and site) and submitted at the cycle's pace,
``--speedup`` times real time (0: as fast as they can be made). Each case runs in its own process so that its
memory is its own. Reported: submit() cost per call (p50/p99/max), the snapshots per second the writer sustains
(snapshots written / writer busy time) against the 10/s required, drops, rows written, file size, and RSS after
setup, at 1/3, 2/3 and the end of the run, and its peak.

Usage: python benchmarks/bench_history.py [--minutes 10] [--cases realtime,flat-out] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HZ = 10.0
T0 = 1_780_000_020.0


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class Fabricator:
    """Texas-sized snapshots, fresh arrays each call (as a real cycle makes them)."""

    def __init__(self, seed: int = 0) -> None:
        import numpy as np

        from powerplane.config import load_scenario
        from powerplane.topology import Topology

        self.np = np
        self.topo = Topology.from_site(load_scenario("texas")[0])
        self.rng = np.random.default_rng(seed)
        t = self.topo
        self.n = t.n_gpus
        self.base = self.rng.uniform(300.0, 650.0, self.n)
        self.starts = {lvl: t.segment_starts("gpu", lvl) for lvl in ("node", "rack", "row", "hall")}
        self.node_starts = {lvl: t.segment_starts("node", lvl) for lvl in ("rack", "row", "hall")}
        self.gpu_count = {lvl: np.diff(np.append(s, self.n)) for lvl, s in self.starts.items()}
        self.jobs = np.arange(1000, 1060, dtype=np.int64)
        self.job_of_gpu = self.rng.integers(0, self.jobs.size, self.n)
        self.energy = np.zeros(self.n)
        self.job_energy = np.zeros(self.jobs.size)

    def __call__(self, k: int) -> object:
        from powerplane.telemetry.snapshot import LevelData, Rollup, Snapshot

        np, t, n = self.np, self.topo, self.n
        t_s = T0 + k / HZ
        swing = 1.0 + 0.15 * np.sin(2 * np.pi * t_s / 2.5)  # a synchronized training swing
        noise = self.rng.standard_normal(n)
        power = self.base * swing + 5.0 * noise
        temp = 45.0 + power / 30.0
        util = np.clip(power / 7.0, 0.0, 100.0)
        q = np.zeros(n, dtype=np.uint8)
        q[self.rng.integers(0, n, 8)] = 2  # a few missing readings each cycle
        ok = q == 0
        gpu = LevelData(
            values={"power_w": power, "temp_c": temp, "util_pct": util},
            quality={m: q for m in ("power_w", "temp_c", "util_pct")},
        )
        self.energy += power / HZ / 3.6e6
        node_power = np.add.reduceat(np.where(ok, power, 0.0), self.starts["node"]) * 1.25
        rollups: dict[str, dict[str, Rollup]] = {}
        okf = ok.astype(np.float64)
        for lvl, st in self.starts.items():
            cnt = np.add.reduceat(okf, st)
            cover = cnt / self.gpu_count[lvl]
            out: dict[str, Rollup] = {}
            for name, v in (("gpu.power_w", power), ("gpu.temp_c", temp), ("gpu.util_pct", util)):
                s = np.add.reduceat(np.where(ok, v, 0.0), st)
                mx = np.maximum.reduceat(np.where(ok, v, -np.inf), st)
                out[name] = Rollup(s, s / cnt, mx, cover, cnt.astype(np.int64))
            if lvl != "node":
                ns = np.add.reduceat(node_power, self.node_starts[lvl])
                out["node.power_w"] = Rollup(ns, ns, ns, np.ones(ns.size), np.ones(ns.size, dtype=np.int64))
            rollups[lvl] = out
        it = float(node_power.sum())
        site_vals = {
            "it_power_w": it,
            "facility_power_w": it * 1.18,
            "meter_power_w": it * 1.18 + 2e5,
            "frequency_hz": 60.0 + 0.01 * noise[0],
        }
        total = float(power[ok].sum())
        one = np.ones(1)
        rollups["site"] = {
            name: Rollup(
                np.array([total]), np.array([total / ok.sum()]), np.array([power.max()]), one, one.astype(np.int64)
            )
            for name in ("gpu.power_w", "gpu.temp_c", "gpu.util_pct")
        }
        job_power = np.bincount(self.job_of_gpu, weights=power, minlength=self.jobs.size)
        self.job_energy += job_power / HZ / 3.6e6
        return Snapshot(
            t_s=t_s,
            seq=k,
            source="bench",
            levels={
                "gpu": gpu,
                "node": LevelData(values={"power_w": node_power}, quality={"power_w": np.zeros(t.n_nodes, np.uint8)}),
                "site": LevelData(
                    values={k2: np.array([v]) for k2, v in site_vals.items()},
                    quality={k2: np.zeros(1, np.uint8) for k2 in site_vals},
                ),
            },
            rollups=rollups,
            job_ids=self.jobs,
            job_power_w=job_power,
            job_coverage=np.ones(self.jobs.size),
            job_energy_kwh=self.job_energy.copy(),
            job_cost=self.job_energy * 0.05,
            gpu_energy_kwh=self.energy.copy(),
        )


def _case(minutes: float, speedup: float, queue_max: int, memory_limit: str) -> dict[str, object]:
    import resource

    import numpy as np

    from powerplane.store.history import HistoryStore

    fab = Fabricator()
    steps = round(minutes * 60 * HZ)
    marks = {steps // 3: "rss_1_3_mb", 2 * steps // 3: "rss_2_3_mb"}
    out: dict[str, object] = {"snapshots": steps}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.duckdb"
        submit_ns = np.zeros(steps, dtype=np.int64)
        fab(0)  # warm up NumPy paths before measuring
        with HistoryStore(path, fab.topo, queue_max=queue_max, memory_limit=memory_limit) as store:
            out["rss_setup_mb"] = _rss_mb()
            period = 1.0 / HZ / speedup if speedup > 0 else 0.0
            t_start = time.perf_counter()
            for k in range(steps):
                snap = fab(k)
                if period:
                    delay = t_start + k * period - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                t = time.perf_counter_ns()
                store.submit(snap)  # type: ignore[arg-type]
                submit_ns[k] = time.perf_counter_ns() - t
                if k in marks:
                    out[marks[k]] = _rss_mb()
            t_submitted = time.perf_counter()
            assert store.flush(timeout=600)
            t_done = time.perf_counter()
            s = store.stats
            out["rss_end_mb"] = _rss_mb()
        out["rss_closed_mb"] = _rss_mb()
        out["file_mb"] = path.stat().st_size / 1e6
    us = submit_ns / 1e3
    out.update(
        submit_p50_us=float(np.percentile(us, 50)),
        submit_p99_us=float(np.percentile(us, 99)),
        submit_max_us=float(us.max()),
        submit_wall_s=t_submitted - t_start,
        flush_s=t_done - t_submitted,
        written=s.written_snapshots,
        dropped=s.dropped,
        rejected=s.rejected,
        busy_s=s.busy_s,
        writer_snap_per_s=s.written_snapshots / s.busy_s if s.busy_s else float("nan"),
        end_to_end_snap_per_s=s.written_snapshots / (t_done - t_start),
        rows=sum(s.rows_written.values()),
        rows_by_table=s.rows_written,
        batches=s.batches,
        max_queue_depth=s.max_queue_depth,
        max_write_s=s.max_write_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )
    return out


def run_case(minutes: float, speedup: float, queue_max: int, memory_limit: str) -> dict[str, object]:
    code = (
        f"import json,sys; sys.path.insert(0, {str(HERE)!r}); import bench_history as b; "
        f"print(json.dumps(b._case({minutes}, {speedup}, {queue_max}, {memory_limit!r})))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


# name: (speedup over real time, 0 = as fast as snapshots can be made; DuckDB memory_limit)
CASES = {"realtime": (1.0, "64MB"), "flat-out": (0.0, "64MB"), "flat-out-256MB": (0.0, "256MB")}
COLUMNS = [
    ("case", "{}"),
    ("sim min", "{:g}"),
    ("x real time", "{}"),
    ("DuckDB memory", "{}"),
    ("submit p50 µs", "{:.1f}"),
    ("submit p99 µs", "{:.1f}"),
    ("submit max µs", "{:.0f}"),
    ("written", "{:,}"),
    ("dropped", "{:,}"),
    ("writer snap/s", "{:,.0f}"),
    ("end-to-end snap/s", "{:,.0f}"),
    ("rows", "{:,}"),
    ("file MB", "{:.1f}"),
    ("RSS setup/⅓/⅔/end MB", "{}"),
    ("peak RSS MB", "{:.0f}"),
    ("max queue", "{}"),
    ("max write ms", "{:.0f}"),
]


def _row(name: str, minutes: float, speedup: float, memory: str, r: dict[str, object]) -> list[str]:
    keys = ("rss_setup_mb", "rss_1_3_mb", "rss_2_3_mb", "rss_end_mb")
    rss = "/".join(f"{float(r[k]):.0f}" for k in keys)  # type: ignore[arg-type]
    values = [
        name,
        minutes,
        f"{speedup:g}" if speedup else "max",
        memory,
        r["submit_p50_us"],
        r["submit_p99_us"],
        r["submit_max_us"],
        r["written"],
        r["dropped"],
        r["writer_snap_per_s"],
        r["end_to_end_snap_per_s"],
        r["rows"],
        r["file_mb"],
        rss,
        r["peak_rss_mb"],
        r["max_queue_depth"],
        float(r["max_write_s"]) * 1e3,  # type: ignore[arg-type]
    ]
    return [fmt.format(v) for (_, fmt), v in zip(COLUMNS, values, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes at 10 Hz (default 10)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--speedup", type=float, default=None, help="override the pace of every case (0 = flat out)")
    ap.add_argument("--queue-max", type=int, default=128, help="HistoryStore queue bound (default 128)")
    ap.add_argument("--record", action="store_true", help="append the results to benchmarks/BENCHMARKS.md")
    args = ap.parse_args()
    rows = []
    print(" | ".join(c for c, _ in COLUMNS))
    for name in args.cases.split(","):
        speedup, memory = CASES[name]
        speedup = speedup if args.speedup is None else args.speedup
        r = run_case(args.minutes, speedup, args.queue_max, memory)
        row = _row(name, args.minutes, speedup, memory, r)
        print(" | ".join(row), flush=True)
        print(
            f"   rows by table: {r['rows_by_table']}; writer busy {r['busy_s']:.1f} s, flush {r['flush_s']:.2f} s, "
            f"RSS after close {r['rss_closed_mb']:.0f} MB"
        )
        rows.append((row, r))
    if args.record:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"
        )
        record = HERE / "BENCHMARKS.md"
        header = "## Telemetry: history (DuckDB)"
        sections = [ln for ln in record.read_text().splitlines() if ln.startswith("## ")] if record.exists() else []
        # Other benchmarks append their own sections: repeat the header unless this one is still the last.
        lines = [] if sections and sections[-1] == header else [f"\n{header}"]
        lines += [
            f"\n### {time.strftime('%Y-%m-%d')}: texas (10,240 GPUs) at 10 Hz into HistoryStore ({machine}; "
            "the 2 cores are shared with other work, so figures are noisy)\n",
            "| " + " | ".join(c for c, _ in COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row, _ in rows]
        lines += [
            "",
            "writer snap/s = snapshots written / writer busy time (required: 10/s); end-to-end = written / wall time "
            "from first submit to flush done (fabrication included, so below the writer's own rate). RSS (process, "
            "fabricator and topology included) after setup, at 1/3 and 2/3 of the submits and after the final flush, "
            "store still open. Drops in the flat-out cases come from submitting far faster than 10 Hz into the "
            f"{args.queue_max}-snapshot queue while a batch insert (or DuckDB's own checkpoint) runs.",
        ]
        with record.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
