"""`powerplane simulate`: run the twin over a horizon and write Parquet tables, a summary and a plot.

Output directory (written atomically; an interrupted run leaves nothing behind):

- ``site.parquet``: every step: powers of the whole site [W], PUE, frequency, price, island flag.
- ``halls.parquet``: every step and hall: IT power [W]; ``bess.parquet``: every step and unit: power [W], SOC.
- ``racks.parquet``: every record interval and rack: mean and max power [W], inlet and hottest GPU [C].
- ``jobs.parquet``: one row per job (kind, class, GPUs, times, energy, cost, faults, throughput lost);
  ``job_power.parquet``: every record interval and job: mean power [W] and the work it has left at the
  interval's end [s of running at full speed] (declared work minus progress since its last checkpoint, as the
  scheduler knows it; inf for services).
- ``gpus.parquet`` with ``--gpu-detail``: every record interval and GPU: mean and last power [W], temperature
  [C], energy counter [mJ], utilization [%].
- ``xid_events.parquet``: the faults injected (time, job, GPU, Xid code).
- ``summary.json`` and ``site_power.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from powerplane.config.loader import load_scenario
from powerplane.core.units import S_PER_H
from powerplane.physics import tariff
from powerplane.store.parquet import TableWriter, atomic_output_dir
from powerplane.telemetry.signal import band_energy_share, largest_swing_w
from powerplane.twin.jobs import KIND_NAMES, PRIORITY_NAMES, STATE_NAMES
from powerplane.twin.twin import Twin, TwinBlock

F64 = NDArray[np.float64]

SITE_COLUMNS = (
    "it_power_w",
    "cooling_power_w",
    "other_power_w",
    "facility_power_w",
    "solar_power_w",
    "wind_power_w",
    "renewable_power_w",
    "curtailed_power_w",
    "bess_power_w",
    "ups_power_w",
    "generator_power_w",
    "unserved_power_w",
    "grid_power_w",
)
MAX_BLOCK_STEPS = 64


@dataclass(frozen=True)
class SimulateOptions:
    scenario: str
    hours: float
    step_s: float = 1.0
    seed: int = 0
    out: Path = Path("runs/sim")
    gpu_detail: bool = False
    force: bool = False
    record_interval_s: float = 60.0
    policy: str = "none"
    dr: tuple[str, ...] = ()  # demand-response events, e.g. "2026-07-15T15:00/3h/-25%"
    # What the mpc planner's IT load comes from (runtime/sim_forecast.py): "persistence", "champion" (the registry's
    # champion in ``models``, the untrained prior without one) or "auto" (the champion if ``models`` has one)
    forecast: str = "auto"
    models: Path | None = None


def block_steps(steps_per_interval: int) -> int:
    """Largest divisor of the record interval (in steps) not above MAX_BLOCK_STEPS."""
    for k in range(min(MAX_BLOCK_STEPS, steps_per_interval), 0, -1):
        if steps_per_interval % k == 0:
            return k
    return 1


class _Recorder:
    """Streams a run's blocks into the Parquet tables and keeps the site series for the summary."""

    def __init__(self, twin: Twin, out: Path, opts: SimulateOptions, steps_per_interval: int) -> None:
        self.twin = twin
        self.opts = opts
        topo = twin.topo
        self.steps_per_interval = steps_per_interval
        site_schema = pa.schema(
            [
                ("t_s", pa.float64()),
                *((c, pa.float64()) for c in SITE_COLUMNS),
                ("pue", pa.float64()),
                ("frequency_hz", pa.float64()),
                ("outdoor_temp_c", pa.float64()),
                ("price_per_kwh", pa.float64()),
                ("islanded", pa.bool_()),
            ]
        )
        self.site = TableWriter(out / "site.parquet", site_schema)
        self.halls = TableWriter(
            out / "halls.parquet",
            pa.schema(
                [
                    ("t_s", pa.float64()),
                    ("hall", pa.dictionary(pa.int16(), pa.string())),
                    ("it_power_w", pa.float64()),
                ]
            ),
        )
        self.bess = TableWriter(
            out / "bess.parquet",
            pa.schema(
                [
                    ("t_s", pa.float64()),
                    ("unit", pa.dictionary(pa.int16(), pa.string())),
                    ("hall", pa.dictionary(pa.int16(), pa.string())),
                    ("power_w", pa.float64()),
                    ("soc", pa.float64()),
                ]
            ),
        )
        self.racks = TableWriter(
            out / "racks.parquet",
            pa.schema(
                [
                    ("t_s", pa.float64()),
                    ("rack", pa.dictionary(pa.int32(), pa.string())),
                    ("hall", pa.dictionary(pa.int16(), pa.string())),
                    ("power_w", pa.float32()),
                    ("power_max_w", pa.float32()),
                    ("inlet_temp_c", pa.float32()),
                    ("gpu_temp_max_c", pa.float32()),
                ]
            ),
        )
        self.job_power = TableWriter(
            out / "job_power.parquet",
            pa.schema(
                [("t_s", pa.float64()), ("job", pa.int64()), ("power_w", pa.float64()), ("work_left_s", pa.float64())]
            ),
        )
        self.gpus = (
            TableWriter(
                out / "gpus.parquet",
                pa.schema(
                    [
                        ("t_s", pa.float64()),
                        ("gpu", pa.int32()),
                        ("node", pa.int32()),
                        ("power_w", pa.float32()),
                        ("power_last_w", pa.float32()),
                        ("temp_c", pa.float32()),
                        ("energy_mj", pa.float64()),
                        ("util_pct", pa.float32()),
                    ]
                ),
            )
            if opts.gpu_detail
            else None
        )
        self._hall_names = pa.array(topo.hall_names, pa.string())
        self._rack_dict = pa.DictionaryArray.from_arrays(
            pa.array(np.arange(topo.n_racks, dtype=np.int32)), pa.array(topo.rack_names)
        )
        self._rack_hall = topo.parent_index("rack", "hall").astype(np.int16)
        self._unit_hall = twin.plant.bess_unit_hall.astype(np.int16)
        self._unit_names = pa.array([u.name for u in twin.site.bess], pa.string())
        self._gpu_node = topo.gpu_node.astype(np.int32)
        self.job_cost: dict[int, float] = {}
        self._series: dict[str, list[F64]] = {
            c: [] for c in (*SITE_COLUMNS, "t_s", "frequency_hz", "price_per_kwh", "bess_soc", "bess_unit_power_w")
        }
        self._reset_interval()

    def _reset_interval(self) -> None:
        topo = self.twin.topo
        self._k = 0
        self._t_start = np.nan
        self._rack_sum = np.zeros(topo.n_racks)
        self._rack_max = np.zeros(topo.n_racks, dtype=np.float32)
        self._job_energy: dict[int, float] = {}
        self._gpu_energy = np.zeros(topo.n_gpus) if self.gpus is not None else None

    def add(self, b: TwinBlock, job_ids: NDArray[np.int64]) -> None:
        twin, topo = self.twin, self.twin.topo
        n = b.t_s.size
        p = b.plant
        with np.errstate(divide="ignore", invalid="ignore"):
            pue = np.where(p.it_power_w > 0, p.facility_power_w / p.it_power_w, np.nan)
        price = tariff.price_per_kwh(b.t_s, twin.site.tariff, twin.site.timezone)
        cols = {
            "t_s": b.t_s,
            **{c: getattr(p, c) for c in SITE_COLUMNS},
            "pue": pue,
            "frequency_hz": p.frequency_hz,
            "outdoor_temp_c": p.outdoor_temp_c,
            "price_per_kwh": price,
            "islanded": p.islanded,
        }
        self.site.append({k: v for k, v in cols.items() if k not in ("bess_soc", "bess_unit_power_w")})
        cols["bess_soc"] = p.bess_soc
        cols["bess_unit_power_w"] = p.bess_unit_power_w
        for c in self._series:
            self._series[c].append(np.asarray(cols[c], dtype=np.float64))
        h = topo.n_halls
        self.halls.append(
            {
                "t_s": np.repeat(b.t_s, h),
                "hall": pa.DictionaryArray.from_arrays(
                    pa.array(np.tile(np.arange(h, dtype=np.int16), n)), self._hall_names
                ),
                "it_power_w": b.fleet.hall_it_power_w.ravel(),
            }
        )
        u = p.bess_unit_power_w.shape[1]
        if u:
            self.bess.append(
                {
                    "t_s": np.repeat(b.t_s, u),
                    "unit": pa.DictionaryArray.from_arrays(
                        pa.array(np.tile(np.arange(u, dtype=np.int16), n)), self._unit_names
                    ),
                    "hall": pa.DictionaryArray.from_arrays(pa.array(np.tile(self._unit_hall, n)), self._hall_names),
                    "power_w": p.bess_unit_power_w.ravel(),
                    "soc": p.bess_soc.ravel(),
                }
            )
        if self._k == 0:
            self._t_start = float(b.t_s[0])
        self._rack_sum += b.fleet.rack_power_w.sum(axis=0, dtype=np.float64)
        np.maximum(self._rack_max, b.fleet.rack_power_w.max(axis=0), out=self._rack_max)
        block_price = float(price.mean())
        for j, e in zip(job_ids.tolist(), b.fleet.job_energy_j[1:].tolist(), strict=True):
            self._job_energy[j] = self._job_energy.get(j, 0.0) + e
            self.job_cost[j] = self.job_cost.get(j, 0.0) + e / 3.6e6 * block_price
        if self._gpu_energy is not None:
            self._gpu_energy += twin.fleet.last_gpu_energy_j
        self._k += n
        if self._k >= self.steps_per_interval:
            self._close_interval(b)

    def _close_interval(self, b: TwinBlock) -> None:
        twin, topo = self.twin, self.twin.topo
        interval_s = self._k * twin.dt_s
        r = topo.n_racks
        t = np.full(r, self._t_start)
        self.racks.append(
            {
                "t_s": t,
                "rack": self._rack_dict,
                "hall": pa.DictionaryArray.from_arrays(pa.array(self._rack_hall), self._hall_names),
                "power_w": (self._rack_sum / self._k).astype(np.float32),
                "power_max_w": self._rack_max,
                "inlet_temp_c": b.rack_inlet_c.astype(np.float32),
                "gpu_temp_max_c": topo.rollup_max(twin.fleet.temp_c, "gpu", "rack").astype(np.float32),
            }
        )
        jobs = np.array(sorted(self._job_energy), dtype=np.int64)
        if jobs.size:
            energy = np.array([self._job_energy[j] for j in jobs])
            tab = twin.workload.jobs
            left = np.maximum(tab.work_s[jobs] - tab.work_done_s[jobs], 0.0)
            self.job_power.append(
                {
                    "t_s": np.full(jobs.size, self._t_start),
                    "job": jobs,
                    "power_w": energy / interval_s,
                    "work_left_s": left,
                }
            )
        if self.gpus is not None and self._gpu_energy is not None:
            g = topo.n_gpus
            f = twin.fleet
            self.gpus.append(
                {
                    "t_s": np.full(g, self._t_start),
                    "gpu": np.arange(g, dtype=np.int32),
                    "node": self._gpu_node,
                    "power_w": (self._gpu_energy / interval_s).astype(np.float32),
                    "power_last_w": f.power_w,
                    "temp_c": f.temp_c.astype(np.float32),
                    "energy_mj": f.energy_j * 1e3,
                    "util_pct": (f.activity * 100.0).astype(np.float32),
                }
            )
        self._reset_interval()

    def close(self) -> dict[str, F64]:
        for w in (self.site, self.halls, self.bess, self.racks, self.job_power, self.gpus):
            if w is not None:
                w.close()
        return {c: np.concatenate(v) if v else np.zeros(0) for c, v in self._series.items()}


def _write_jobs(twin: Twin, out: Path, job_cost: dict[int, float], done_at_start_s: F64 | None = None) -> None:
    jobs = twin.workload.jobs
    n = jobs.n
    v = jobs.view
    # Work the jobs already running at the start (the warm start) had done then: declared work minus it is what
    # the scheduler expects them still to need (a forecaster reading the run must not count the whole work).
    done0 = np.zeros(n)
    if done_at_start_s is not None:
        done0[: min(done_at_start_s.size, n)] = done_at_start_s[:n]
    table = pa.table(
        {
            "job": np.arange(n, dtype=np.int64),
            "name": jobs.names,
            "kind": [KIND_NAMES[k] for k in v("kind")],
            "priority": [PRIORITY_NAMES[p] for p in v("priority")],
            "n_gpus": v("n_gpus"),
            "state": [STATE_NAMES[s] for s in v("state")],
            "submit_s": v("submit_s"),
            "start_s": v("start_s"),
            "end_s": v("end_s"),
            "deferrable": v("deferrable").astype(bool),
            "energy_kwh": v("energy_j") / 3.6e6,
            "cost": np.array([job_cost.get(j, 0.0) for j in range(n)]),
            "gpu_hours": v("gpu_seconds") / S_PER_H,
            "throughput_lost_gpu_hours": v("throughput_lost_gpu_s") / S_PER_H,
            "failures": v("failures"),
            "checkpoints": v("checkpoints"),
            "lost_work_hours": v("lost_work_s") / S_PER_H,
            "work_done_hours": v("work_done_s") / S_PER_H,
            "work_hours": v("work_s") / S_PER_H,
            "work_done_at_start_hours": done0 / S_PER_H,
        }
    )
    import pyarrow.parquet as pq

    pq.write_table(table, str(out / "jobs.parquet"), compression="zstd")
    ev = twin.workload.xid_events
    pq.write_table(
        pa.table(
            {
                "t_s": np.array([e.t_s for e in ev], dtype=np.float64),
                "job": np.array([e.job for e in ev], dtype=np.int64),
                "gpu": np.array([e.gpu for e in ev], dtype=np.int64),
                "xid": np.array([e.xid for e in ev], dtype=np.int64),
                "uuid": [twin.topo.gpu_uuids[e.gpu] for e in ev],
            }
        ),
        str(out / "xid_events.parquet"),
    )


def summarize(twin: Twin, series: dict[str, F64], wall_s: float, opts: SimulateOptions) -> dict[str, object]:
    dt = twin.dt_s
    s = series
    mwh = dt / 3.6e9
    facility, grid, it = s["facility_power_w"], s["grid_power_w"], s["it_power_w"]
    balance = (
        facility
        - s["bess_power_w"]
        - s["renewable_power_w"]
        - s["generator_power_w"]
        - s["ups_power_w"]
        - s["unserved_power_w"]
    )
    balance_err = float(abs(balance.sum() - grid.sum()) / max(abs(facility.sum()), 1.0))
    site = twin.site
    bill = tariff.bill(s["t_s"], grid, dt, site.tariff, site.timezone, site.electrical.contract_demand_kw)
    share_fac, band = band_energy_share(facility, dt)
    share_grid, _ = band_energy_share(grid, dt)
    _, win = tariff.window_average_w(s["t_s"], grid, site.tariff.demand_window_min * 60.0)
    jobs = twin.workload.jobs
    steps = facility.size
    gpu_steps = steps * twin.topo.n_gpus
    return {
        "scenario": site.name,
        "seed": opts.seed,
        "step_s": dt,
        "hours": steps * dt / S_PER_H,
        "start_s": float(s["t_s"][0]),
        "gpus": twin.topo.n_gpus,
        "energy_mwh": {
            "facility": float(facility.sum() * mwh),
            "it": float(it.sum() * mwh),
            "cooling": float(s["cooling_power_w"].sum() * mwh),
            "grid_import": float(np.maximum(grid, 0).sum() * mwh),
            "grid_export": float(np.maximum(-grid, 0).sum() * mwh),
            "renewable_used": float(s["renewable_power_w"].sum() * mwh),
            "renewable_curtailed": float(s["curtailed_power_w"].sum() * mwh),
            "bess_discharge": float(np.maximum(s["bess_power_w"], 0).sum() * mwh),
            "bess_charge": float(np.maximum(-s["bess_power_w"], 0).sum() * mwh),
            "generator": float(s["generator_power_w"].sum() * mwh),
            "unserved": float(s["unserved_power_w"].sum() * mwh),
        },
        "power_mw": {
            "facility_mean": float(facility.mean() / 1e6),
            "facility_peak": float(facility.max() / 1e6),
            "facility_min": float(facility.min() / 1e6),
            "it_mean": float(it.mean() / 1e6),
            "it_peak": float(it.max() / 1e6),
            "grid_peak": float(grid.max() / 1e6),
            "grid_peak_15min": float(win.max() / 1e6) if win.size else 0.0,
            "contract_demand": site.electrical.contract_demand_kw / 1e3,
        },
        "pue": float(facility.sum() / it.sum()),
        "largest_1s_swing_mw": {
            "facility": largest_swing_w(facility, dt) / 1e6,
            "it": largest_swing_w(it, dt) / 1e6,
            "grid": largest_swing_w(grid, dt) / 1e6,
        },
        "spectral_share": {"band_hz": list(band), "facility": share_fac, "grid": share_grid},
        "cost": bill.to_dict(),
        "energy_balance_error": balance_err,
        "frequency_hz": {"min": float(s["frequency_hz"].min()), "max": float(s["frequency_hz"].max())},
        "jobs": {
            "total": jobs.n,
            "finished": int(np.count_nonzero(jobs.view("state") == 6)),
            "failures": int(jobs.view("failures").sum()),
            "checkpoints": int(jobs.view("checkpoints").sum()),
            "gpu_hours": float(jobs.view("gpu_seconds").sum() / S_PER_H),
            "throughput_lost_gpu_hours": float(jobs.view("throughput_lost_gpu_s").sum() / S_PER_H),
        },
        "weather": twin.plant.weather_source,
        "run": {
            "wall_s": wall_s,
            "realtime_factor": steps * dt / max(wall_s, 1e-9),
            "ns_per_gpu_step": wall_s / max(gpu_steps, 1) * 1e9,
        },
    }


def plot_site(series: dict[str, F64], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = series["t_s"]
    hours = (t - t[0]) / S_PER_H
    n = t.size
    bucket = max(1, n // 4000)
    m = (n // bucket) * bucket

    def env(x: F64) -> tuple[F64, F64, F64]:
        r = x[:m].reshape(-1, bucket) / 1e6
        return r.mean(axis=1), r.min(axis=1), r.max(axis=1)

    h = hours[:m].reshape(-1, bucket)[:, 0]
    fig, ax = plt.subplots(figsize=(12, 5), dpi=110)
    for name, color in (
        ("facility_power_w", "C3"),
        ("it_power_w", "C0"),
        ("grid_power_w", "C2"),
        ("cooling_power_w", "C1"),
        ("renewable_power_w", "C4"),
        ("bess_power_w", "C5"),
    ):
        mean, lo, hi = env(series[name])
        ax.plot(h, mean, color=color, lw=1.0, label=name.removesuffix("_power_w"))
        if bucket > 1:
            ax.fill_between(h, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("hours since start")
    ax.set_ylabel("MW")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def simulate(opts: SimulateOptions, progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Run the twin and write its outputs; returns the summary. Fails before simulating on bad input."""
    site, site_file = load_scenario(opts.scenario)
    if not opts.hours > 0:
        raise ValueError("the horizon must be positive")
    steps_per_interval = round(opts.record_interval_s / opts.step_s)
    if steps_per_interval < 1 or abs(steps_per_interval * opts.step_s - opts.record_interval_s) > 1e-9:
        raise ValueError(f"the record interval ({opts.record_interval_s} s) must be a multiple of the step")
    total = round(opts.hours * S_PER_H / opts.step_s)
    if total < 1:
        raise ValueError("the horizon is shorter than one step")
    from powerplane.runtime.energy import make_policy, parse_dr
    from powerplane.runtime.energy_oracle import OraclePolicy, Realized
    from powerplane.runtime.energy_report import energy_summary, write_report
    from powerplane.runtime.sim_forecast import BlockFeed, choose
    from powerplane.runtime.sim_forecast import summary as forecast_summary

    events = list(site.energy.demand_response) + [parse_dr(d, site.timezone) for d in opts.dr]
    forecast_mode, registry = choose(opts.forecast, opts.models)
    with atomic_output_dir(opts.out, opts.force) as out:
        twin = Twin(site, site_file, seed=opts.seed, dt_s=opts.step_s)
        done_at_start = np.array(twin.workload.jobs.view("work_done_s"), dtype=np.float64)
        policy = make_policy(opts.policy, twin, events)
        policy.demand_rate_scale = min(1.0, opts.hours / (30.4 * 24.0))  # the bill prorates the monthly charge
        policy.billing_end_s = twin.now_s + opts.hours * S_PER_H  # the run is the billing period
        feed = None
        if forecast_mode == "champion" and hasattr(policy, "forecast_source"):
            feed = BlockFeed(twin, registry)  # the job-aware forecaster, fed from the twin's blocks as live does
            policy.forecast_source = feed.source
        per_block = block_steps(steps_per_interval)
        t0 = time.perf_counter()
        if isinstance(policy, OraclePolicy):  # perfect foresight: the same twin's load, without batteries
            shadow = Twin(site, site_file, seed=opts.seed, dt_s=opts.step_s)
            parts: dict[str, list[F64]] = {k: [] for k in ("t", "grid", "renew", "curt", "hall")}
            done = 0
            while done < total:
                b = shadow.advance(min(per_block, total - done))
                for k, v in (
                    ("t", b.t_s),
                    ("grid", b.plant.grid_power_w + b.plant.bess_power_w),
                    ("renew", b.plant.renewable_power_w),
                    ("curt", b.plant.curtailed_power_w),
                    ("hall", b.fleet.hall_it_power_w),
                ):
                    parts[k].append(np.asarray(v, dtype=np.float64))
                done += b.t_s.size
            cat = {k: np.concatenate(v) for k, v in parts.items()}
            policy.set_actual(Realized(cat["t"], opts.step_s, cat["grid"], cat["renew"], cat["curt"], cat["hall"]))
            del shadow, parts, cat
        rec = _Recorder(twin, out, opts, steps_per_interval)
        controller = policy.controller()
        done = 0
        while done < total:
            n = min(per_block, total - done)
            policy.before_block(twin.now_s)
            block = twin.advance(n, controller)  # type: ignore[arg-type]
            policy.after_block(block)
            if feed is not None:
                feed.observe(block, twin.last_block_jobs)
            rec.add(block, twin.last_block_jobs)
            done += n
            if progress is not None:
                progress(done, total)
        wall = time.perf_counter() - t0
        series = rec.close()
        _write_jobs(twin, out, rec.job_cost, done_at_start)
        summary = summarize(twin, series, wall, opts)
        bill = tariff.Bill(**summary["cost"])  # type: ignore[arg-type]
        summary.update(energy_summary(twin, series, policy, opts.policy, out, bill))
        if hasattr(policy, "forecast_source"):
            summary["controller"]["it_forecast"] = forecast_summary(  # type: ignore[index]
                forecast_mode, registry, feed, policy.stats.plan_solves, getattr(policy, "forecast_plans", 0)
            )
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        plot_site(
            series,
            out / "site_power.png",
            f"{site.name}: site power ({opts.hours:g} h, step {opts.step_s:g} s, policy {opts.policy})",
        )
        write_report(out, summary, series, policy)
    return summary
