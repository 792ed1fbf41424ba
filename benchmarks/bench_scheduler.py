"""Benchmark the GPU pool scheduler: decision latency at site scale, and the openb replay against FIFO first-fit.

Cases, in one run:
  decision    `texas` pool (10,240 B200 GPUs, 1,280 nodes), filled by a mixed workload (fractions 1/8-1/2, HAMi
              shares, 1-8 GPUs, gangs of 16-256, three classes, eight tenants) until 5,000 jobs queue. Each decision
              is one `schedule_step` after an event (a random running job ends, a new job arrives; about a third of
              arrivals are core and may preempt): p50 / p99 / max over --decisions events     [target: <= 50 ms]
  cold        the same with every "does not fit" cache dropped first (the worst case of a decision)
  timeline    `expected_timeline` over every queued and running job
  cordon      (--cordon N, default 102 = 1 % of the GPUs) the decision case again with N random GPUs cordoned and
              their jobs evicted first, as the self-healing does, against the run without (same seed, same run)
  replay      `powerplane schedule replay` on the openb trace with the default settings (pool 10 % of the node
              list, arrivals 300x), ours and the FIFO first-fit baseline in the same run       [target: <= 10 s,
              allocation rate >= 10 points above FIFO first-fit, lower core queueing delay]
  sweep       (--sweep) the same replay at other loads, including the trace as recorded (1x, whole node list)

Usage: python benchmarks/bench_scheduler.py [--decisions 500] [--cordon 102] [--sweep] [--record]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from machine_info import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADING = "## Scheduler"
OPENB = ROOT / "src" / "powerplane" / "data" / "alibaba_openb_pod_list_default.csv"

SHAPES: list[tuple[dict[str, Any], float]] = [
    ({"fraction": 0.125}, 8),
    ({"fraction": 0.25}, 8),
    ({"fraction": 0.5}, 8),
    ({"compute_pct": 30, "mem_mib": 40_000}, 4),
    ({"gpus": 1}, 10),
    ({"gpus": 2}, 6),
    ({"gpus": 4}, 6),
    ({"gpus": 8}, 10),
    ({"gpus": 16}, 3),
    ({"gpus": 64}, 1.5),
    ({"gpus": 256}, 0.3),
]
CLASSES = ["core", "normal", "low"]


def decisions(n_decisions: int, n_queued: int = 5000, seed: int = 0, cordon: int = 0) -> dict[str, float]:
    from powerplane.config import load_scenario
    from powerplane.control.scheduler import GpuPool, JobRequest, Scheduler
    from powerplane.topology import Topology

    site, _ = load_scenario("texas")
    pool = GpuPool.from_topology(Topology.from_site(site))
    sched = Scheduler(pool)
    rng = np.random.default_rng(seed)
    p = np.array([w for _, w in SHAPES])
    p /= p.sum()
    count = 0

    def submit(t: float) -> None:
        nonlocal count
        shape = SHAPES[int(rng.choice(len(SHAPES), p=p))][0]
        sched.submit(
            JobRequest(
                f"job-{count:06d}",
                priority=CLASSES[int(rng.integers(3))],
                tenant=f"tenant-{int(rng.integers(8))}",
                est_duration_s=float(rng.uniform(600.0, 14_400.0)),
                checkpoint_interval_s=1800.0,
                **shape,
            ),
            t,
        )
        count += 1

    t = 0.0
    t0 = time.perf_counter()
    while sched.n_queued < n_queued:
        for _ in range(100):
            submit(t)
        sched.schedule_step(t)
    fill_s = time.perf_counter() - t0
    out: dict[str, float] = {
        "gpus": pool.n_gpus,
        "running": len(sched.running),
        "queued": sched.n_queued,
        "alloc": pool.allocated_milli / pool.total_milli,
        "fill_s": fill_s,
    }
    iso = []
    for g in rng.choice(pool.n_gpus, size=cordon, replace=False).tolist():
        c0 = time.perf_counter()
        sched.cordon_gpu(g, t)
        sched.evict_gpu(g, t)
        iso.append(time.perf_counter() - c0)
    if cordon:
        sched.schedule_step(t)
        out["cordon_ms"] = float(np.median(iso)) * 1e3
        out["gpu_requeues"] = sched.n_gpu_requeues
    pre0 = sched.n_preemptions
    warm, event = [], []
    for _ in range(n_decisions):
        t += 10.0
        running = list(sched.running.values())
        e0 = time.perf_counter()
        sched.finish(running[int(rng.integers(len(running)))].request.name, t)
        submit(t)
        d0 = time.perf_counter()
        sched.schedule_step(t)
        d1 = time.perf_counter()
        warm.append(d1 - d0)
        event.append(d1 - e0)
    cold = []
    for _ in range(max(n_decisions // 10, 10)):
        t += 10.0
        for cache in (sched._failed, sched._pfailed, sched._revived, sched._previved):
            cache.clear()
        d0 = time.perf_counter()
        sched.schedule_step(t)
        cold.append(time.perf_counter() - d0)
    d0 = time.perf_counter()
    timeline = sched.expected_timeline(t)
    out["timeline_ms"] = (time.perf_counter() - d0) * 1e3
    out["timeline_jobs"] = len(timeline)
    w, ev, c = np.array(warm) * 1e3, np.array(event) * 1e3, np.array(cold) * 1e3
    out.update(
        p50_ms=float(np.percentile(w, 50)),
        p99_ms=float(np.percentile(w, 99)),
        max_ms=float(w.max()),
        event_p99_ms=float(np.percentile(ev, 99)),
        cold_p50_ms=float(np.percentile(c, 50)),
        cold_p99_ms=float(np.percentile(c, 99)),
        preemptions=sched.n_preemptions - pre0,
        queued_end=sched.n_queued,
    )
    return out


def replay_case(speedup: float, pool_scale: float, start_quantile: float) -> dict[str, Any]:
    from powerplane.control.scheduler.replay import replay

    t0 = time.perf_counter()
    r = replay(OPENB, speedup=speedup, pool_scale=pool_scale, start_quantile=start_quantile)
    wall = time.perf_counter() - t0
    ours, fifo = r["runs"]["ours"], r["runs"]["fifo_first_fit"]
    return {
        "speedup": speedup,
        "pool_scale": pool_scale,
        "gpus": r["pool"]["gpus"],
        "offered_load": r["offered_load"],
        "wall_s": wall,
        "ours_s": ours["wall_s"],
        "fifo_s": fifo["wall_s"],
        "alloc_ours": ours["alloc_rate_avg"],
        "alloc_fifo": fifo["alloc_rate_avg"],
        "points": r["comparison"]["alloc_rate_points"],
        "frag_ours": ours["fragmentation_avg"],
        "frag_fifo": fifo["fragmentation_avg"],
        "core_mean_ours": ours["queue_delay_s"]["core"]["mean"],
        "core_mean_fifo": fifo["queue_delay_s"]["core"]["mean"],
        "core_p95_ours": ours["queue_delay_s"]["core"]["p95"],
        "core_p95_fifo": fifo["queue_delay_s"]["core"]["p95"],
        "low_mean_ours": ours["queue_delay_s"]["low"]["mean"],
        "low_mean_fifo": fifo["queue_delay_s"]["low"]["mean"],
        "preemptions": ours["preemptions"],
        "lost_gpu_h": ours["lost_work_gpu_h"],
    }


def replay_rows(cases: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| speedup | pool | GPUs | offered load | wall s (ours / FIFO) | alloc ours | alloc FIFO | points "
        "| frag ours / FIFO | core delay mean s (ours / FIFO) | core p95 s | low mean s | preemptions "
        "| lost GPU-h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        rows.append(
            f"| {c['speedup']:g}x | {c['pool_scale']:g} | {c['gpus']:,} | {c['offered_load']:.2f} "
            f"| {c['wall_s']:.1f} ({c['ours_s']:.1f} / {c['fifo_s']:.1f}) | {c['alloc_ours']:.1%} "
            f"| {c['alloc_fifo']:.1%} | {c['points']:+.1f} | {c['frag_ours']:.2%} / {c['frag_fifo']:.2%} "
            f"| {c['core_mean_ours']:,.0f} / {c['core_mean_fifo']:,.0f} "
            f"| {c['core_p95_ours']:,.0f} / {c['core_p95_fifo']:,.0f} "
            f"| {c['low_mean_ours']:,.0f} / {c['low_mean_fifo']:,.0f} | {c['preemptions']:,} "
            f"| {c['lost_gpu_h']:.1f} |"
        )
    return rows


def report(dec: dict[str, float], cases: list[dict[str, Any]], load_before: str) -> list[str]:
    lines = [
        f"### {time.strftime('%Y-%m-%d')}: {machine()}; load average {load_before} when started "
        "(the 2 cores are shared with other work, so times are noisy)",
        "",
        f"Decision latency on `texas` ({int(dec['gpus']):,} GPUs), {int(dec['running']):,} jobs running "
        f"({dec['alloc']:.1%} of GPU-milli allocated), {int(dec['queued']):,} queued; one decision = "
        "`schedule_step` after one job ended and one arrived.",
        "",
        "| decisions p50 ms | p99 ms | max ms | event + decision p99 ms | cold p50 ms | cold p99 ms "
        "| preemptions | timeline ms (jobs) | target |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {dec['p50_ms']:.2f} | {dec['p99_ms']:.2f} | {dec['max_ms']:.2f} | {dec['event_p99_ms']:.2f} "
        f"| {dec['cold_p50_ms']:.2f} | {dec['cold_p99_ms']:.2f} | {int(dec['preemptions'])} "
        f"| {dec['timeline_ms']:.1f} ({int(dec['timeline_jobs']):,}) | <= 50 ms |",
        "",
        "openb replay (`powerplane schedule replay`, 7,064 GPU pods): ours (binpack, priority classes, backfill, "
        "preemption from 30-min checkpoints) and FIFO first-fit in the same run. Wall = the whole command "
        "(target <= 10 s); allocation = time-weighted allocated GPU-milli / capacity over the arrival window; "
        "frag = Weng et al. fragment share of capacity; delays from arrival to first start. The first row is the "
        "default; `1x / 1` is the trace as recorded on its whole node list.",
        "",
        *replay_rows(cases),
        "",
    ]
    return lines


def record(lines: list[str]) -> Path:
    """Add the dated block under HEADING in BENCHMARKS.md, creating the section at the end if needed; other
    sections are left as they are."""
    path = HERE / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if HEADING not in text.splitlines():
        intro = (
            "GPU pool scheduler (`powerplane.control.scheduler`): decision latency at site scale and the openb "
            "trace replay against FIFO first-fit; `python benchmarks/bench_scheduler.py --sweep --record`."
        )
        with path.open("a") as fh:
            fh.write(("" if text.endswith("\n") else "\n") + "\n" + "\n".join([HEADING, "", intro, "", *lines]))
        return path
    all_lines = text.splitlines()
    start = all_lines.index(HEADING)
    end = next((i for i in range(start + 1, len(all_lines)) if all_lines[i].startswith("## ")), len(all_lines))
    if end == len(all_lines):
        with path.open("a") as fh:
            fh.write(("" if text.endswith("\n") else "\n") + "\n".join(["", *lines]))
    else:
        all_lines[end:end] = [*lines]
        path.write_text("\n".join(all_lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=500)
    ap.add_argument("--cordon", type=int, default=102, help="GPUs cordoned for the cordon case (0: skip it)")
    ap.add_argument("--sweep", action="store_true", help="also replay at other loads, and the trace as recorded")
    ap.add_argument("--record", action="store_true", help="append a dated block to benchmarks/BENCHMARKS.md")
    args = ap.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    dec = decisions(args.decisions)
    print(
        f"decision: p50 {dec['p50_ms']:.2f} ms  p99 {dec['p99_ms']:.2f} ms  max {dec['max_ms']:.2f} ms  "
        f"cold p99 {dec['cold_p99_ms']:.2f} ms  ({int(dec['running'])} running, {int(dec['queued'])} queued, "
        f"{int(dec['preemptions'])} preemptions)  timeline {dec['timeline_ms']:.1f} ms"
    )
    cordoned = decisions(args.decisions, cordon=args.cordon) if args.cordon > 0 else None
    if cordoned is not None:
        print(
            f"decision with {args.cordon} GPUs cordoned: p50 {cordoned['p50_ms']:.2f} ms  p99 {cordoned['p99_ms']:.2f}"
            f" ms  max {cordoned['max_ms']:.2f} ms  cold p99 {cordoned['cold_p99_ms']:.2f} ms  (cordon + evict one GPU"
            f" {cordoned['cordon_ms']:.2f} ms, {int(cordoned['gpu_requeues'])} jobs requeued)"
        )
    settings = [(300.0, 0.1, 0.01)]
    if args.sweep:
        settings += [(200.0, 0.1, 0.01), (500.0, 0.1, 0.01), (500.0, 0.15, 0.01), (100.0, 0.1, 0.01), (1.0, 1.0, 0.0)]
    cases = []
    for speedup, scale, q in settings:
        c = replay_case(speedup, scale, q)
        cases.append(c)
        print(
            f"replay {speedup:g}x pool {scale:g}: wall {c['wall_s']:.1f} s  alloc {c['alloc_ours']:.1%} vs "
            f"{c['alloc_fifo']:.1%} ({c['points']:+.1f} points)  core delay {c['core_mean_ours']:.0f} vs "
            f"{c['core_mean_fifo']:.0f} s  preemptions {c['preemptions']}"
        )
    lines = report(dec, cases, load)
    print("\n".join(lines))
    if args.record:
        print(f"recorded in {record(lines)}")
        if cordoned is not None:
            print(f"recorded in {record_cordon(dec, cordoned, args.cordon, load)}")


def record_cordon(dec: dict[str, float], cor: dict[str, float], n: int, load: str) -> Path:
    """One row: decision latency with ``n`` GPUs cordoned beside the same run without."""
    from datetime import date

    from machine_info import add_table_row

    note = (
        "Decision latency on `texas` (10,240 GPUs) with N random GPUs cordoned and their jobs evicted first (as the "
        "self-healing isolates GPUs), beside the uncordoned run of the same benchmark invocation (same seed); "
        "`python benchmarks/bench_scheduler.py --cordon N --record`."
    )
    header = [
        "| date | machine | load | cordoned GPUs | jobs requeued | cordon + evict ms | p50 ms (none / cordoned) "
        "| p99 ms | max ms | cold p99 ms | target | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    row = (
        f"| {date.today().isoformat()} | {machine()} | {load} | {n} | {int(cor['gpu_requeues'])} "
        f"| {cor['cordon_ms']:.2f} | {dec['p50_ms']:.2f} / {cor['p50_ms']:.2f} | {dec['p99_ms']:.2f} / "
        f"{cor['p99_ms']:.2f} | {dec['max_ms']:.2f} / {cor['max_ms']:.2f} | {dec['cold_p99_ms']:.2f} / "
        f"{cor['cold_p99_ms']:.2f} | p99 <= 50 ms | shared machine, other jobs running |"
    )
    return add_table_row(HERE / "BENCHMARKS.md", "## Scheduler: GPU cordon", note, header, row)


if __name__ == "__main__":
    main()
