"""Benchmark the alert engine: the default rules over 10,240 GPUs per cycle, side by side with a per-entity
Python loop over the same GPU checks in the same run; then the twin fault test (detection and restart).

Cycles: snapshots of the `qingyang` twin (10,240 GPUs) through the real Tracker. Cases:
  engine, quiet          the default rules (all levels), nothing breached                     [target <= 5 ms]
  engine, 1 % GPUs hot   102 GPUs inside their thermal margin and 10 with PCIe replay storms (pending/firing)
  python loop baseline   the GPU health checks of the default rules (thermal margin, slowdown, ECC, Xid,
                         PCIe replays, NVLink CRC, throttle bits, off the bus) as a loop over the GPUs
Then ``run_fault_test`` on the `small` twin for --fault-hours: injected Xid 79, 94, 48, 74, 13.

Usage: python benchmarks/bench_alerts.py [--cycles 200] [--fault-hours 1] [--record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from machine_info import add_table_row, machine

HERE = Path(__file__).resolve().parent
HEADING = "## Operations: alert rules"
TABLE_HEADER = [
    "| date | machine | GPUs | rules | engine quiet ms (median / p99) | engine 1 % hot ms | python loop ms "
    "| speed-up | note |",
    "|---|---|---|---|---|---|---|---|---|",
]
NOTE = (
    "`python benchmarks/bench_alerts.py --record`: the default rule set evaluated on `qingyang` twin snapshots "
    "(10,240 GPUs) through the real Tracker; target <= 5 ms per cycle. Baseline: the same GPU health checks as a "
    "Python loop over the GPUs, in the same run."
)
FAULT_HEADING = "## Operations: fault detection and self-healing in the twin"
FAULT_HEADER = [
    "| date | machine | run | Xid | detected after [s] | reading -> alert [ms] | healed by | running again [s] "
    "| restart delay drawn [s] | within | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
FAULT_NOTE = (
    "`python benchmarks/bench_alerts.py --record`: `run_fault_test` on the `small` twin (1 s steps) with injected "
    "faults; 'detected after' is sim time from the fault to the alert (the fault shows in the next 1 s reading), "
    "'reading -> alert' the compute time of the rule evaluation on that reading, 'running again' the sim time until "
    "the job is RUNNING again, against the restart delay the twin drew for it (what happens without self-healing)."
)


def snapshots(n_cycles: int) -> tuple[Any, Any, list[Any], list[Any]]:
    from powerplane.config import load_scenario
    from powerplane.telemetry.tracker import Tracker
    from powerplane.twin.twin import Twin

    site, f = load_scenario("qingyang")
    twin = Twin(site, f, seed=1)
    tracker = Tracker(twin.topo, site)
    frames = []
    for _ in range(n_cycles):
        twin.advance(1)
        frames.append(twin.read())
    quiet = [tracker.ingest(fr, twin.workload.gpu_job) for fr in frames]
    # The same readings with 1 % of GPUs inside their thermal margin and 10 with PCIe replay storms.
    from powerplane.ops.alerts import static_facts

    slow = static_facts(site, twin.topo)["gpu"]["slowdown_temp_c"]
    rng = np.random.default_rng(0)
    hot_idx = rng.choice(twin.topo.n_gpus, twin.topo.n_gpus // 100, replace=False)
    storm = hot_idx[:10]
    tr2 = Tracker(twin.topo, site)
    hot = []
    for k, fr in enumerate(frames):
        g = dict(fr.levels["gpu"])
        temp = np.array(g["temp_c"])
        temp[hot_idx] = slow[hot_idx] - 3.0
        g["temp_c"] = temp
        rep = np.array(g["pcie_replay_total"])
        rep[storm] += 30.0 * k
        g["pcie_replay_total"] = rep
        levels = dict(fr.levels)
        levels["gpu"] = g
        hot.append(tr2.ingest(type(fr)(fr.t_s, fr.source, levels), twin.workload.gpu_job))
    return site, twin.topo, quiet, hot


def time_engine(site: Any, topo: Any, snaps: list[Any]) -> tuple[list[float], int, int]:
    from powerplane.ops.alerts import AlertEngine

    eng = AlertEngine.with_default_rules(site, topo)
    ctx = {"cycle_lag_s": 0.1, "source_age_s": 0.5, "planner_failed": 0.0, "safe_mode": 0.0, "islanded": 0.0,
           "demand_15min_w": 0.5 * site.electrical.contract_demand_kw * 1e3,
           "contract_w": site.electrical.contract_demand_kw * 1e3}  # fmt: skip
    times, transitions = [], 0
    for s in snaps:
        ctx["t_s"] = s.t_s
        t0 = time.perf_counter()
        transitions += len(eng.evaluate(s, ctx))
        times.append((time.perf_counter() - t0) * 1e3)
    return times[5:], transitions, len(eng.rules)  # the first cycles fill rate() windows


def python_loop(site: Any, topo: Any, snaps: list[Any]) -> list[float]:
    """The GPU checks one GPU at a time (what a straightforward per-entity implementation does)."""
    from powerplane.ops.alerts import static_facts

    slow = static_facts(site, topo)["gpu"]["slowdown_temp_c"].tolist()
    n = topo.n_gpus
    prev: dict[str, list[float]] | None = None
    window: list[tuple[float, list[float]]] = []
    times = []
    for s in snaps:
        g = s.levels["gpu"]
        t0 = time.perf_counter()
        vals = {k: g.values[k].tolist() for k in ("temp_c", "ecc_dbe_vol", "xid_total", "pcie_replay_total",
                                                   "nvlink_crc_total", "throttle_reasons", "power_w")}  # fmt: skip
        q = g.quality["power_w"].tolist()
        window.append((s.t_s, vals["pcie_replay_total"]))
        while len(window) > 1 and s.t_s - window[1][0] >= 60:
            window.pop(0)
        old = window[0][1]
        fired = []
        for i in range(n):
            t = vals["temp_c"][i]
            if t > slow[i] - 5 or t >= slow[i]:
                fired.append(("thermal", i))
            if vals["ecc_dbe_vol"][i] > 0:
                fired.append(("ecc", i))
            if prev is not None and vals["xid_total"][i] > prev["xid_total"][i]:
                fired.append(("xid", i))
            if vals["pcie_replay_total"][i] - old[i] > 8:
                fired.append(("pcie", i))
            if prev is not None and vals["nvlink_crc_total"][i] - prev["nvlink_crc_total"][i] > 100:
                fired.append(("nvlink", i))
            if int(vals["throttle_reasons"][i]) & 0xC8:
                fired.append(("throttle", i))
            if q[i] != 0:
                fired.append(("off_bus", i))
        prev = vals
        times.append((time.perf_counter() - t0) * 1e3)
    return times[5:]


def fault_rows(hours: float) -> tuple[list[dict[str, Any]], float]:
    from powerplane.runtime.ops_loop import run_fault_test

    out = run_fault_test("small", hours)
    return out["faults"], out["wall_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--fault-hours", type=float, default=1.0)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    site, topo, quiet, hot = snapshots(args.cycles)
    q_ms, q_tr, n_rules = time_engine(site, topo, quiet)
    h_ms, h_tr, _ = time_engine(site, topo, hot)
    loop_ms = python_loop(site, topo, quiet)
    med = statistics.median
    p99 = float(np.percentile(q_ms, 99))
    print(machine(), f"load {load:.1f}")
    print(f"GPUs {topo.n_gpus}, rules {n_rules}, cycles {len(q_ms)}")
    print(f"engine quiet     median {med(q_ms):.2f} ms  p99 {p99:.2f} ms  transitions {q_tr}")
    print(f"engine 1 % hot   median {med(h_ms):.2f} ms  p99 {np.percentile(h_ms, 99):.2f} ms  transitions {h_tr}")
    print(f"python loop      median {med(loop_ms):.2f} ms  (x{med(loop_ms) / med(q_ms):.0f} the engine)")
    faults, wall = fault_rows(args.fault_hours)
    print(f"\nfault test: small, {args.fault_hours:g} h in {wall:.1f} s")
    for f in faults:
        print(f"  xid {f['xid']:>3}: detected after {f['detected_after_s']} s ({f['reading_to_alert_ms']:.2f} ms), "
              f"healed by {'+'.join(f['healed_by']) or '-'}, running again after {f['running_again_after_s']} s "
              f"(drawn restart delay {f['restart_delay_s']:.0f} s)")  # fmt: skip
    if args.record:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        note = args.note or f"load {load:.1f} at start; shared machine, other jobs running"
        row = (
            f"| {day} | {machine()} | {topo.n_gpus:,} | {n_rules} | {med(q_ms):.2f} / {p99:.2f} | {med(h_ms):.2f} "
            f"| {med(loop_ms):.1f} | x{med(loop_ms) / med(q_ms):.0f} | {note} |"
        )
        path = HERE / "BENCHMARKS.md"
        add_table_row(path, HEADING, NOTE, TABLE_HEADER, row)
        for f in faults:
            row = (
                f"| {day} | {machine()} | small {args.fault_hours:g} h | {f['xid']} | {f['detected_after_s']} "
                f"| {f['reading_to_alert_ms']:.2f} | {'+'.join(f['healed_by']) or '-'} | {f['running_again_after_s']} "
                f"| {f['restart_delay_s']:.0f} | {'yes' if f['within_restart_delay'] else 'no'} | {note} |"
            )
            add_table_row(path, FAULT_HEADING, FAULT_NOTE, FAULT_HEADER, row)
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
