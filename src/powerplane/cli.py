"""The `powerplane` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from powerplane import __version__
from powerplane.core.errors import PowerPlaneError
from powerplane.core.units import parse_duration_s

app = typer.Typer(
    name="powerplane",
    help="Track, predict and steer the compute load and power of a 10,000-GPU AI datacenter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_subcommands() -> None:
    from powerplane.control.scheduler.cli import app as schedule_app
    from powerplane.ops.cli import app as logs_app

    app.add_typer(schedule_app, name="schedule", help="The GPU pool scheduler: replay real traces.")
    app.add_typer(logs_app, name="logs", help="Kernel and system logs: Xid faults, template mining, search.")
    from powerplane.forecast.cli import app as forecast_app
    from powerplane.forecast.cli import models_app

    app.add_typer(forecast_app, name="forecast", help="Load forecasts: rolling-origin backtests.")
    app.add_typer(models_app, name="models", help="The forecast model registry: list, show, promote, rollback.")
    from powerplane.ops.alerts_cli import app as alerts_app
    from powerplane.runtime.ops_loop import register_cli as register_alerts_test

    register_alerts_test(alerts_app)
    app.add_typer(alerts_app, name="alerts", help="Alert rules, fault injection test, self-healing.")
    from powerplane.api.cli import run as run_command
    from powerplane.api.cli import tokens_app

    app.command(name="run")(run_command)
    app.add_typer(tokens_app, name="tokens", help="API tokens of the cockpit: create, list, revoke.")
    from powerplane.bus.cli import agent as agent_command
    from powerplane.bus.cli import bus_app
    from powerplane.bus.cli import tracker as tracker_command

    app.command(name="agent")(agent_command)
    app.command(name="tracker")(tracker_command)
    app.add_typer(bus_app, name="bus", help="The NATS JetStream bus: a local server, rollup audits.")


_register_subcommands()
console = Console()
err = Console(stderr=True, soft_wrap=True)  # error text unwrapped: paths and field names stay whole


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def scenarios() -> None:
    """List the shipped site scenarios."""
    from powerplane.config import list_scenarios, load_scenario
    from powerplane.topology import Topology

    table = Table("scenario", "GPUs", "halls", "contract MW", "grid Hz", "description")
    for name, desc in list_scenarios().items():
        site, _ = load_scenario(name)
        topo = Topology.from_site(site)
        table.add_row(
            name,
            f"{topo.n_gpus:,}",
            str(topo.n_halls),
            f"{site.electrical.contract_demand_kw / 1e3:g}",
            str(site.grid.frequency_hz),
            desc,
        )
    console.print(table)


@app.command()
def simulate(
    scenario: Annotated[str, typer.Option(help="shipped scenario name (see `powerplane scenarios`) or a site YAML")] = (
        "small"
    ),
    hours: Annotated[float | None, typer.Option(help="horizon in hours")] = None,
    days: Annotated[float | None, typer.Option(help="horizon in days")] = None,
    step: Annotated[str, typer.Option(help="time step, e.g. 1s or 100ms")] = "1s",
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same numbers")] = 0,
    gpu_detail: Annotated[bool, typer.Option("--gpu-detail", help="also write per-GPU tables")] = False,
    interval: Annotated[str, typer.Option(help="record interval of rack, job and GPU tables")] = "60s",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/sim"),
    force: Annotated[bool, typer.Option("--force", help="replace an existing output directory")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    policy: Annotated[str, typer.Option(help="energy management: none, threshold, mpc or oracle")] = "none",
    dr: Annotated[
        list[str] | None, typer.Option(help="demand-response event, e.g. 2026-07-15T15:00/3h/-25% (repeatable)")
    ] = None,
    forecast: Annotated[
        str,
        typer.Option(
            help="what mpc plans its IT load on: auto (the registry's champion if it has one, else persistence), "
            "champion (the champion, or the untrained prior without one) or persistence"
        ),
    ] = "auto",
    models: Annotated[
        Path, typer.Option(help="directory of the forecast model registry (registry.duckdb), as for serve")
    ] = Path("runs"),
) -> None:
    """Simulate a site second by second with the digital twin; write Parquet, summary.json, report.html, a plot."""
    from powerplane.runtime.simulate import SimulateOptions
    from powerplane.runtime.simulate import simulate as run_simulation

    if hours is not None and days is not None:
        raise _fail("give --hours or --days, not both")
    horizon_h = hours if hours is not None else (days * 24.0 if days is not None else 1.0)
    try:
        step_s = parse_duration_s(step)
        interval_s = parse_duration_s(interval)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    opts = SimulateOptions(
        scenario=scenario,
        hours=horizon_h,
        step_s=step_s,
        seed=seed,
        out=out,
        gpu_detail=gpu_detail,
        force=force,
        record_interval_s=interval_s,
        policy=policy,
        dr=tuple(dr or ()),
        forecast=forecast,
        models=models,
    )
    columns = (
        TextColumn("[bold]simulating[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("sim", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            summary = run_simulation(opts, progress)
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: no output was written[/]")
        raise typer.Exit(130) from None
    if as_json:
        console.print_json(json.dumps(summary))
        return
    _print_summary(summary, out)


@app.command()
def track(
    run_dir: Annotated[Path | None, typer.Argument(help="with --source replay: a `powerplane simulate` output")] = None,
    source: Annotated[str, typer.Option(help="twin, dcgm, nvml or replay")] = "twin",
    targets: Annotated[
        str | None,
        typer.Option(help="dcgm: a file of URLs, comma-separated URLs, or file://PATH of a saved scrape"),
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="site scenario or YAML (twin; dcgm host names)")] = None,
    interval: Annotated[str, typer.Option(help="cycle interval, e.g. 1s or 100ms")] = "1s",
    speed: Annotated[float, typer.Option(help="twin/replay: simulated seconds per wall second")] = 1.0,
    port: Annotated[int | None, typer.Option(help="serve /metrics on this port (0: any free port)")] = 9464,
    host: Annotated[str, typer.Option(help="address to serve /metrics on")] = "127.0.0.1",
    once: Annotated[bool, typer.Option("--once", help="read one snapshot, print it and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (with --once)")] = False,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    history: Annotated[Path | None, typer.Option(help="DuckDB file to keep history in")] = None,
    fake_nvml: Annotated[bool, typer.Option("--fake-nvml", help="nvml: use the built-in fake (demos, tests)")] = False,
    seed: Annotated[int, typer.Option(help="twin: random seed")] = 0,
    timeout: Annotated[float, typer.Option(help="dcgm: per-target timeout in seconds")] = 5.0,
) -> None:
    """Track GPUs live: validate and roll up every cycle, show a summary table and serve Prometheus /metrics."""
    from powerplane.runtime.track import TrackOptions, build_tracking, run_live, snapshot_json

    try:
        interval_s = parse_duration_s(interval)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    target_list: list[str] = []
    if targets:
        target_list = [t.strip() for t in targets.split(",") if t.strip()]
    opts = TrackOptions(
        source=source,
        scenario=scenario,
        targets=target_list,
        run_dir=run_dir,
        interval_s=interval_s,
        speed=speed,
        seed=seed,
        fake_nvml=fake_nvml,
        timeout_s=timeout,
        history=history,
    )
    try:
        tr = build_tracking(opts)
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from None
    try:
        if once:
            snap = tr.cycle()
            if tr.history is not None:
                tr.history.flush(10.0)
            doc = snapshot_json(tr, snap)
            if as_json:
                sys.stdout.write(json.dumps(doc, indent=1) + "\n")
            else:
                console.print(_track_table(doc, tr.cycle_ms))
            return
        from rich.live import Live

        with Live(console=console, refresh_per_second=4, transient=False) as live:

            def show(snap: object) -> None:
                live.update(_track_table(snapshot_json(tr, snap), tr.cycle_ms))  # type: ignore[arg-type]

            run_live(tr, interval_s, port, host, duration, show, lambda url: err.print(f"serving {url}"))
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        tr.close()


def _track_table(doc: dict[str, Any], cycle_ms: list[float]) -> Table:
    site = doc["site"]
    t = Table(title=f"{doc['source']}: {doc['gpus']:,} GPUs, snapshot {doc['seq']}", show_header=True)
    t.add_column("entity")
    t.add_column("GPU power", justify="right")
    t.add_column("node power", justify="right")
    t.add_column("GPU temp max", justify="right")
    t.add_column("coverage", justify="right")

    def mw(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:,.3f} MW"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.1f} %"

    def c(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} C"

    t.add_row(
        "site",
        mw(site.get("gpu_power_w_sum")),
        mw(site.get("node_power_w_sum")),
        c(site.get("gpu_temp_c_max")),
        pct(site.get("gpu_coverage")),
    )
    for h in doc["halls"]:
        t.add_row(
            h["name"],
            mw(h.get("gpu_power_w_sum")),
            mw(h.get("node_power_w_sum")),
            c(h.get("gpu_temp_c_max")),
            pct(h.get("gpu_coverage")),
        )
    extra = []
    for k in ("facility_power_w", "meter_power_w", "frequency_hz", "pue"):
        if site.get(k) is not None:
            v = site[k]
            extra.append(f"{k}={v / 1e6:.3f} MW" if k.endswith("_w") else f"{k}={v:.3f}")
    if extra:
        t.caption = "  ".join(extra)
    rej = doc["rejected_total"]
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(rej.items())) or "none"
    p50 = float(np.percentile(cycle_ms, 50)) if cycle_ms else float("nan")
    t.add_section()
    t.add_row("rejected values", reasons, "", "", f"cycle p50 {p50:.1f} ms")
    for fail in doc.get("failed_targets", [])[:5]:
        t.add_row("target down", str(fail), "", "", "")
    return t


def _print_summary(s: dict[str, Any], out: Path) -> None:
    p, e, c, run = s["power_mw"], s["energy_mwh"], s["cost"], s["run"]
    t = Table(title=f"{s['scenario']}: {s['hours']:g} h at {s['step_s']:g} s, {s['gpus']:,} GPUs", show_header=False)
    t.add_row("facility power", f"mean {p['facility_mean']:.2f} MW, peak {p['facility_peak']:.2f} MW")
    t.add_row("IT power", f"mean {p['it_mean']:.2f} MW, peak {p['it_peak']:.2f} MW")
    t.add_row("PUE", f"{s['pue']:.3f}")
    t.add_row(
        "energy",
        f"facility {e['facility']:.1f} MWh, grid import {e['grid_import']:.1f} MWh, "
        f"renewables {e['renewable_used']:.1f} MWh",
    )
    t.add_row("peak 15-min grid demand", f"{p['grid_peak_15min']:.2f} MW (contract {p['contract_demand']:.2f} MW)")
    t.add_row("largest 1-s swing", f"{s['largest_1s_swing_mw']['facility']:.2f} MW")
    band = s["spectral_share"]["band_hz"]
    t.add_row(f"spectral share {band[0]:g}-{band[1]:g} Hz", f"{s['spectral_share']['facility'] * 100:.1f} %")
    t.add_row(
        "cost",
        f"{c['total']:,.0f} {c['currency']} (energy {c['energy_cost']:,.0f}, demand {c['demand_charge']:,.0f})",
    )
    t.add_row(
        "jobs",
        f"{s['jobs']['total']} ({s['jobs']['failures']} faults, {s['jobs']['checkpoints']} checkpoints)",
    )
    t.add_row("speed", f"{run['wall_s']:.1f} s wall, {run['realtime_factor']:,.0f}x real time")
    t.add_row("output", str(out))
    console.print(t)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. piped into head
        sys.exit(0)


if __name__ == "__main__":
    main()
