"""Forecasting benchmarks: accuracy against the baselines, training time, live forecast latency.

    python benchmarks/bench_forecast.py --run runs/texas-7d [--run runs/qingyang-7d] [--record]
        [--backtest-json runs/bt/backtest.json]   # accuracy from `powerplane forecast backtest` on the same runs

1. Accuracy (rolling-origin backtests of :mod:`powerplane.forecast.backtest` on each run): job-aware 15-min MASE
   and P10-P90 coverage beside the best statsforecast baseline (AutoETS / MSTL) in the same run; 1-min error
   around announced events beside persistence.
2. Training on all of a 7-day run's 1-minute data (features + fit) beside LightGBM on the same features.
3. Live forecast of the site (next hour) and of every rack at 10 s, 1 min, 15 min, 1 h and 24 h, beside one
   statsforecast AutoETS forward of the site series, on the scenario's topology.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import add_table_row, machine, median_s
from powerplane.config.loader import load_scenario
from powerplane.forecast import baselines
from powerplane.forecast.backtest import Split, backtest_run, subset, summarize, targets, train_job_aware
from powerplane.forecast.data import RunData, load_run
from powerplane.forecast.live import LiveForecaster
from powerplane.forecast.registry import Registry
from powerplane.telemetry.snapshot import LevelData, Snapshot
from powerplane.topology import Topology

BENCH = Path(__file__).resolve().parent / "BENCHMARKS.md"


def accuracy(runs: list[RunData]) -> tuple[list[dict[str, object]], dict[str, object]]:
    results = []
    for r in runs:
        t0 = time.perf_counter()
        res = backtest_run(r)
        print(f"  backtest {r.name}: {time.perf_counter() - t0:.0f} s")
        results.append(res)
    return results, targets(summarize(results), results)


def training_time(run: RunData) -> tuple[float, float]:
    """Seconds to train the job-aware model on the whole run, and LightGBM on the same features (4 horizons)."""
    sp = Split(np.arange(1440, run.n - 1, dtype=np.int64), run.n, np.zeros(0, np.int64), np.zeros(0, bool))
    t0 = time.perf_counter()
    _, tr = train_job_aware(run, sp)
    ja_s = time.perf_counter() - t0
    hz = np.array([1, 15, 60, 1440])
    tr_e = subset(tr, slice(None), hz)
    te_e = subset(tr_e, slice(0, 10))
    t0 = time.perf_counter()
    baselines.lightgbm_forecasts(run, tr_e, te_e)
    return ja_s, time.perf_counter() - t0


def latency(run: RunData, scenario: str, registry: Path) -> tuple[float, float, float, int]:
    """Median ms of the site forecast, of the all-racks forecast, and of an AutoETS forward; and the rack count."""
    site, _ = load_scenario(scenario)
    topo = Topology.from_site(site)
    model, _ = train_job_aware(run)
    reg = Registry(registry)
    v = reg.register("job-aware", model.to_bytes(), model.meta, t_s=0.0)
    reg.promote(v, t_s=0.0)
    fc = LiveForecaster(site, topo, registry.parent)
    bounds = run.minute_slices()
    # what the queue declares (kinds, sizes) and a placement of the running jobs on contiguous GPUs, so the rack
    # forecast runs its per-GPU path (GPU -> job -> rack) as it does live
    gpu_job = np.full(topo.n_gpus, -1, np.int64)
    fc.set_placement(type("Workload", (), {"gpu_job": gpu_job, "jobs": run.jobs})())
    rack_w = np.full(topo.n_racks, float(np.nanmean(run.it_w)) / topo.n_racks)
    q = np.zeros(1, np.uint8)
    for m in range(min(run.n, 2 * 1440)):
        a, b = bounds[m], bounds[m + 1]
        site_lv = LevelData(
            values={
                "facility_power_w": np.array([run.facility_w[m]]),
                "it_power_w": np.array([run.it_w[m]]),
                "outdoor_temp_c": np.array([run.outdoor_temp_c[m]]),
            },
            quality={"facility_power_w": q, "it_power_w": q, "outdoor_temp_c": q},
        )
        rack_lv = LevelData(values={"power_w": rack_w}, quality={"power_w": np.zeros(topo.n_racks, np.uint8)})
        fc.observe(
            Snapshot(
                run.t0_s + 60.0 * m + 30.0,
                m,
                "bench",
                {"site": site_lv, "rack": rack_lv},
                {},
                job_ids=run.job_id[a:b],
                job_power_w=run.job_power_w[a:b],
                job_coverage=np.ones(b - a),
            )
        )
    last = min(run.n, 2 * 1440) - 1
    ids = run.job_id[bounds[last] : bounds[last + 1]]
    owner = np.repeat(ids, np.maximum(run.jobs.n_gpus[ids], 1))[: topo.n_gpus]
    gpu_job[: owner.size] = owner
    fc.set_placement(type("Workload", (), {"gpu_job": gpu_job})())
    now = run.t0_s + 60.0 * min(run.n, 2 * 1440)
    site_ms = 1e3 * median_s(lambda: fc.forecast(now), 30)
    racks_ms = 1e3 * median_s(lambda: fc.forecast_racks(now), 30)
    from statsforecast.models import AutoETS

    y = np.nan_to_num(run.facility_w[: 2 * 1440], nan=float(np.nanmean(run.facility_w)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ets = AutoETS(season_length=1).fit(y)
        ets.forward(y, h=60)  # numba warm-up
        ets_ms = 1e3 * median_s(lambda: ets.forward(y, h=60, level=[80]), 10)
    return site_ms, racks_ms, ets_ms, topo.n_racks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", type=Path, required=True, help="a `powerplane simulate` run (7 days)")
    ap.add_argument("--scenario", default="texas", help="topology for the latency benchmark")
    ap.add_argument("--backtest-json", type=Path, help="take the accuracy from this backtest.json of the same runs")
    ap.add_argument("--record", action="store_true", help="add rows to benchmarks/BENCHMARKS.md")
    ap.add_argument("--note", default="shared machine, other jobs running", help="note for the recorded rows")
    args = ap.parse_args()
    runs = [load_run(p) for p in args.run]
    print("training time")
    ja_s, lgb_s = training_time(runs[0])
    print("latency")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        site_ms, racks_ms, ets_ms, n_racks = latency(runs[0], args.scenario, Path(tmp) / "registry.duckdb")
    if args.backtest_json:  # the accuracy of a `powerplane forecast backtest` run on these same runs
        import json

        while not args.backtest_json.exists():  # a backtest of the same runs may still be writing it
            time.sleep(10)
        bt = json.loads(args.backtest_json.read_text())
        tg = bt["targets"]
        print(f"accuracy from {args.backtest_json}")
        acc_names = [r["run"] for r in bt["runs"]]
        for r in bt["runs"]:  # each run's own figures (the row is their mean)
            m = r["metrics"]
            sf = [m[k]["15min"]["mase"] for k in ("autoets", "mstl") if m.get(k, {}).get("15min", {}).get("mase")]
            print(
                f"  {r['run']}: 15-min MASE {m['job-aware']['15min']['mase']:.3f}, best statsforecast "
                f"{min(sf):.3f}, coverage {m['job-aware']['15min']['coverage_p10_p90']:.3f}, 1-min events "
                f"{r['events_1min']['reduction_pct']:.1f} % below persistence"
            )
    else:
        print("accuracy (rolling-origin backtests)")
        _, tg = accuracy(runs)
        acc_names = [r.name for r in runs]
    print("| runs | job-aware 15-min MASE | best statsforecast MASE | reduction | coverage | 1-min events |")
    print(
        f"| {len(acc_names)} | {tg['mase_15min']:.3f} | {tg['best_statsforecast_mase_15min']:.3f} | "
        f"{tg['reduction_vs_best_statsforecast_pct']:.1f} % | {tg['coverage_15min']:.3f} | "
        f"{tg['events_1min_reduction_vs_persistence_pct']:.1f} % |"
    )
    print(f"training 7 days of 1-min data: job-aware {ja_s:.1f} s, LightGBM (4 horizons) {lgb_s:.1f} s")
    print(
        f"forecast: site next hour {site_ms:.2f} ms, {n_racks} racks x 5 horizons {racks_ms:.2f} ms, "
        f"AutoETS forward (site, 60 steps) {ets_ms:.2f} ms"
    )
    if not args.record:
        return
    day = dt.date.today().isoformat()
    mach = machine()
    names = ", ".join(acc_names)
    add_table_row(
        BENCH,
        "## Forecasting: accuracy (rolling-origin backtests)",
        "15-min-ahead site facility power; MASE scaled by the training window's persistence MAE at the same "
        "horizon. Targets: job-aware MASE <= 0.5 and >= 30 % below the best statsforecast; P10-P90 coverage "
        "75-85 %; 1-min error around announced events >= 50 % below persistence.",
        [
            "| date | machine | runs | job-aware MASE | best statsforecast MASE | reduction | P10-P90 coverage | "
            "1-min events vs persistence | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ],
        f"| {day} | {mach} | {names} | {tg['mase_15min']:.3f} | {tg['best_statsforecast_mase_15min']:.3f} | "
        f"{tg['reduction_vs_best_statsforecast_pct']:.1f} % | {tg['coverage_15min']:.3f} | "
        f"{tg['events_1min_reduction_vs_persistence_pct']:.1f} % | {args.note} |",
    )
    add_table_row(
        BENCH,
        "## Forecasting: training and live latency",
        "Training: features + fit on all of a 7-day 1-minute run (target <= 60 s), beside LightGBM on the same "
        "features. Latency: median of 30 calls on the scenario's topology (target <= 50 ms for all racks at all "
        "horizons), beside one statsforecast AutoETS forward of the site series.",
        [
            "| date | machine | run | job-aware train s | LightGBM train s | site next hour ms | racks | "
            "all racks x 5 horizons ms | AutoETS forward ms | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ],
        f"| {day} | {mach} | {runs[0].name} | {ja_s:.1f} | {lgb_s:.1f} | {site_ms:.2f} | {n_racks} | "
        f"{racks_ms:.2f} | {ets_ms:.2f} | {args.note} |",
    )
    print(f"recorded in {BENCH}")


if __name__ == "__main__":
    main()
