"""Benchmark the digital twin: `texas` (10,240 GPUs) at 1 s and 100 ms steps, on one core.

Each case runs in its own process (single-threaded BLAS) so that peak memory is that case's alone.
Cases:
  block-1s     the twin's blocked advance (64-step blocks), 1 s steps, no output   [target: 24 h <= 20 s]
  simulate-1s  `powerplane simulate` end to end (Parquet, summary, plot), 1 s steps
  block-100ms  blocked advance at 100 ms steps                                       [target: 24 h <= 200 s]
  step-1s      baseline: the same twin advanced one step per call (the live-cycle path), 1 s steps

Usage: python benchmarks/bench_twin.py [--hours 24] [--hours-100ms 24] [--record] [--profile]
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
ONE_CORE = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _case(kind: str, hours: float, step: float) -> dict[str, float]:
    import resource

    import numpy as np

    from powerplane.config import load_scenario
    from powerplane.twin.twin import Twin

    site, path = load_scenario("texas")
    steps = round(hours * 3600 / step)
    t_init = time.perf_counter()
    if kind == "simulate":
        from powerplane.runtime.simulate import SimulateOptions, simulate

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            simulate(SimulateOptions("texas", hours, step, seed=0, out=Path(tmp) / "run"))
            wall = time.perf_counter() - t0
    else:
        twin = Twin(site, path, seed=0, dt_s=step)
        t0 = time.perf_counter()
        done = 0
        block = 64 if kind == "block" else 1
        checksum = 0.0
        while done < steps:
            n = min(block, steps - done)
            checksum += float(twin.advance(n).plant.facility_power_w.sum())
            done += n
        wall = time.perf_counter() - t0
        assert np.isfinite(checksum)
    init = t0 - t_init
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu_steps = steps * 10_240
    return {
        "wall_s": wall,
        "init_s": init,
        "sim_hours": hours,
        "realtime_x": hours * 3600 / wall,
        "ns_per_gpu_step": wall / gpu_steps * 1e9,
        "peak_rss_mb": rss_mb,
    }


def run_case(kind: str, hours: float, step: float) -> dict[str, float]:
    env = {**os.environ, **ONE_CORE}
    code = (
        f"import json,sys; sys.path.insert(0, {str(HERE)!r}); import bench_twin as b; "
        f"print(json.dumps(b._case({kind!r}, {hours}, {step})))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(hours: float = 1.0) -> str:
    env = {**os.environ, **ONE_CORE}
    code = (
        "import cProfile, pstats, io; from powerplane.config import load_scenario; "
        "from powerplane.twin.twin import Twin; s,p=load_scenario('texas'); tw=Twin(s,p,seed=0,dt_s=1.0); "
        f"pr=cProfile.Profile(); pr.enable(); [tw.advance(64) for _ in range(int({hours}*3600/64))]; pr.disable(); "
        "o=io.StringIO(); pstats.Stats(pr,stream=o).sort_stats('tottime').print_stats(12); print(o.getvalue())"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours at 1 s")
    ap.add_argument("--hours-100ms", type=float, default=24.0, help="simulated hours at 100 ms")
    ap.add_argument("--baseline-hours", type=float, default=1.0, help="simulated hours for the per-step baseline")
    ap.add_argument("--record", action="store_true", help="append the results to benchmarks/BENCHMARKS.md")
    ap.add_argument("--profile", action="store_true", help="print where the time goes (cProfile, 1 h at 1 s)")
    args = ap.parse_args()
    cases = [
        ("block-1s", "block", args.hours, 1.0, 20.0 * args.hours / 24.0),
        ("simulate-1s", "simulate", args.hours, 1.0, None),
        ("step-1s (baseline)", "step", args.baseline_hours, 1.0, None),
        ("block-100ms", "block", args.hours_100ms, 0.1, 200.0 * args.hours_100ms / 24.0),
    ]
    rows = []
    header = (
        f"{'case':<20} {'sim h':>6} {'wall s':>8} {'x real time':>12} {'ns/GPU-step':>12} {'peak MB':>8} "
        f"{'target s':>9}"
    )
    print(header)
    for name, kind, hours, step, target in cases:
        if hours <= 0:
            continue
        r = run_case(kind, hours, step)
        t = f"{target:.1f}" if target else "-"
        line = (
            f"{name:<20} {hours:>6g} {r['wall_s']:>8.2f} {r['realtime_x']:>12,.0f} {r['ns_per_gpu_step']:>12.2f} "
            f"{r['peak_rss_mb']:>8.0f} {t:>9}"
        )
        print(line, flush=True)
        rows.append((name, hours, step, r, target))
    prof = profile() if args.profile else ""
    if prof:
        print(prof)
    if args.record:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"
        )
        lines = [
            f"\n### Twin speed, {time.strftime('%Y-%m-%d')} ({machine}; one core: BLAS threads = 1)\n",
            "| case | simulated h | wall s | x real time | ns per GPU-step | peak RSS MB | target wall s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, hours, _, r, target in rows:
            lines.append(
                f"| {name} | {hours:g} | {r['wall_s']:.2f} | {r['realtime_x']:,.0f} | "
                f"{r['ns_per_gpu_step']:.2f} | {r['peak_rss_mb']:.0f} | {f'{target:.1f}' if target else '-'} |"
            )
        if prof:
            lines += ["", "Profile (1 h at 1 s, blocked advance, top by own time):", "", "```", prof.strip(), "```"]
        with (HERE / "BENCHMARKS.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
