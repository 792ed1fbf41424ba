"""Fidelity report of the digital twin against the published figures in ../shared/FACTS.md.

Writes benchmarks/FIDELITY.md (with --record) and prints the same table. Checks:
- per-GPU H100 training power at 100 ms vs the measured 8xH100 trace (idle ~70 W, compute ~550-600 W,
  GPUs of a node correlated ~0.99, node 0.6-4.7 kW of GPU power);
- texas at 100 ms: the 8k-GPU job's swing within one second, the spectral share in 0.1-3 Hz, the dominant
  frequency vs the iteration period, the step down at a checkpoint and at a fault;
- texas 24 h at 1 s: mean and peak facility power, PUE, energy balance, faults per GPU-day vs Llama 3.

Usage: python benchmarks/fidelity_twin.py [--record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from powerplane.config import load_scenario
from powerplane.telemetry.signal import band_energy_share, largest_swing_w
from powerplane.twin.twin import Twin

HERE = Path(__file__).resolve().parent


def h100_gpus() -> list[tuple[str, str, str]]:
    site, path = load_scenario("qingyang")
    tw = Twin(site, path, seed=1, dt_s=0.1)
    wl = tw.workload
    j = int(np.flatnonzero(wl.jobs.view("kind") == 0)[0])
    tw.workload.quiet(j, tw.now_s)
    gpus = wl.jobs.gpus[j][:8]  # one node
    blocks = [tw.advance(60) for _ in range(50)]  # 5 minutes at 100 ms
    p = np.concatenate([b.fleet.gpu_power_w[:, gpus] for b in blocks])
    corr = np.corrcoef(p.T)[np.triu_indices(8, 1)]
    idle = np.flatnonzero(wl.gpu_job < 0)
    idle_w = float(tw.read().metric("gpu", "power_w")[idle].mean()) if idle.size else float("nan")
    node = p.sum(axis=1) / 1e3
    return [
        ("H100 idle power", "~70 W", f"{idle_w:.0f} W"),
        ("H100 compute-phase power (p95)", "~550-600 W", f"{np.percentile(p, 95):.0f} W"),
        ("H100 collective-phase power (p5)", "near idle (~70-200 W)", f"{np.percentile(p, 5):.0f} W"),
        ("correlation of the 8 GPUs of a node", "~0.99", f"min {corr.min():.3f}, mean {corr.mean():.3f}"),
        ("GPU power of one node (8 GPUs)", "~0.6-4.7 kW", f"{node.min():.1f}-{node.max():.1f} kW"),
    ]


def texas_100ms() -> list[tuple[str, str, str]]:
    site, path = load_scenario("texas")
    tw = Twin(site, path, seed=2, dt_s=0.1)
    wl = tw.workload
    j = int(np.flatnonzero((wl.jobs.view("kind") == 0) & (wl.jobs.view("n_gpus") >= 8000))[0])
    tw.workload.quiet(j, tw.now_s)
    fac = np.concatenate([tw.advance(60).plant.facility_power_w for _ in range(50)])
    share, band = band_energy_share(fac, 0.1)
    spec = np.abs(np.fft.rfft(fac - fac.mean()))
    freqs = np.fft.rfftfreq(fac.size, 0.1)
    peak_hz = freqs[np.argmax(spec[1:]) + 1]
    it_before = np.concatenate([tw.advance(60).plant.it_power_w for _ in range(5)]).mean()
    tw.workload.trigger(j, "next_ckpt_s", tw.now_s)
    ckpt = tw.advance(100).plant.it_power_w[20:].mean()
    tw.advance(int(wl.jobs.ckpt_duration_s[j] / 0.1) + 50)
    tw.workload.quiet(j, tw.now_s)
    tw.workload.trigger(j, "next_fail_s", tw.now_s)
    fault = tw.advance(100).plant.it_power_w[20:].mean()
    return [
        (
            "8,192-GPU job: largest 1-s swing of facility power",
            "megawatts",
            f"{largest_swing_w(fac, 0.1) / 1e6:.1f} MW",
        ),
        (f"share of spectral energy in {band[0]:g}-{band[1]:g} Hz", "mostly", f"{share * 100:.1f} %"),
        (
            "dominant frequency vs 1 / iteration period",
            "equal",
            f"{peak_hz:.3f} Hz vs {1 / wl.jobs.iteration_s[j]:.3f} Hz",
        ),
        ("IT power step at a checkpoint", "tens of MW at 16k H100 (Llama 3)", f"-{(it_before - ckpt) / 1e6:.1f} MW"),
        ("IT power step at a fault", "similar to a checkpoint", f"-{(it_before - fault) / 1e6:.1f} MW"),
    ]


def texas_day() -> list[tuple[str, str, str]]:
    site, path = load_scenario("texas")
    tw = Twin(site, path, seed=0, dt_s=1.0)
    keys = ("facility_power_w", "it_power_w", "grid_power_w", "bess_power_w", "renewable_power_w")
    acc: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for _ in range(86400 // 64):
        p = tw.advance(64).plant
        for k in keys:
            acc[k].append(getattr(p, k))
    s = {k: np.concatenate(v) for k, v in acc.items()}
    bal = s["facility_power_w"] - s["bess_power_w"] - s["renewable_power_w"]
    err = abs(bal.sum() - s["grid_power_w"].sum()) / s["facility_power_w"].sum()
    faults = int(tw.workload.jobs.view("failures").sum())
    gpu_days = tw.workload.jobs.view("gpu_seconds").sum() / 86400
    return [
        (
            "texas facility power, 24 h in July",
            "mean ~15 MW, peaks near 25 MW",
            f"mean {s['facility_power_w'].mean() / 1e6:.1f} MW, peak {s['facility_power_w'].max() / 1e6:.1f} MW",
        ),
        (
            "texas PUE (energy-weighted)",
            "1.2-1.5 for chilled air in a hot summer",
            f"{s['facility_power_w'].sum() / s['it_power_w'].sum():.3f}",
        ),
        ("energy balance: grid = facility - BESS - renewables", "within 0.1 %", f"{err:.1e}"),
        (
            "job-stalling faults per GPU-day",
            "~0.00053 (Llama 3: 466 in 54 days on 16k GPUs)",
            f"{faults / max(gpu_days, 1):.5f} ({faults} faults)",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="write benchmarks/FIDELITY.md")
    args = ap.parse_args()
    rows = [*h100_gpus(), *texas_100ms(), *texas_day()]
    width = max(len(r[0]) for r in rows)
    for what, ref, got in rows:
        print(f"{what:<{width}}  {got:<28}  (reference: {ref})")
    if args.record:
        lines = [
            "# Twin fidelity report",
            "",
            f"Generated by `python benchmarks/fidelity_twin.py --record` on {time.strftime('%Y-%m-%d')}. "
            "References are the published figures in `../shared/FACTS.md`; the 24-hour figures use seed 0, the 100 ms "
            "figures five minutes of steady iterations (checkpoints, faults and stragglers held off, then triggered).",
            "",
            "| measure | reference | twin |",
            "|---|---|---|",
            *(f"| {w} | {r} | {g} |" for w, r, g in rows),
            "",
            "Gaps: texas peaks stay near 22 MW (the reference says near 25 MW on hot afternoons): the Greensboro TMY "
            "stand-in with +3 C is milder than a Texas heat wave. The single-day fault count is a small sample of a "
            "Poisson process.",
            "",
        ]
        (HERE / "FIDELITY.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
