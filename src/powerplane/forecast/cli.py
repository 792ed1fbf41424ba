"""``powerplane forecast ...`` and ``powerplane models ...`` (typer sub-apps the main CLI mounts).

    powerplane forecast backtest --scenario texas --days 7 --seeds 3 --out runs/bt [--register]
    powerplane models list | show VERSION | promote VERSION --alias champion | rollback [--alias champion]

Twin runs for backtests are cached under ``--cache`` (default ``runs/forecast-cache``) keyed by scenario, days,
seed and a hash of the twin's code and the scenario file, so a second backtest reuses them. This module is a
command: it is the one place in ``forecast/`` that calls the simulator (``runtime.simulate``), lazily.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from powerplane.core.clock import WallClock
from powerplane.core.errors import PowerPlaneError
from powerplane.forecast.registry import DEFAULT_PATH, Registry

app = typer.Typer(
    help="Load forecasts: rolling-origin backtests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The forecast model registry.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
_out = Console()
_err = Console(stderr=True, soft_wrap=True)
DEFAULT_CACHE = Path("runs/forecast-cache")
RegistryOpt = Annotated[Path, typer.Option("--registry", help="registry file (DuckDB)")]
# an alias move (promote, rollback): which alias, why and who, kept in the audit history
AliasOpt = Annotated[str, typer.Option(help="champion or challenger")]
ReasonOpt = Annotated[str, typer.Option(help="why (kept in the history)")]
ByOpt = Annotated[str, typer.Option(help="who")]


@app.callback()
def _group() -> None:
    """Load forecasts."""


@models_app.callback()
def _models_group() -> None:
    """The model registry."""


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def code_version(scenario_file: Path) -> str:
    """Hash of the code that shapes a twin run (twin, physics, config, scheduler) and the scenario file."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("twin", "physics", "config", "control/scheduler", "runtime/simulate.py"):
        p = root / sub
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.read_bytes())
    h.update(Path(scenario_file).read_bytes())
    return h.hexdigest()[:10]


def cached_run(scenario: str, days: float, seed: int, cache: Path) -> Path:
    """The run directory of (scenario, days, seed), simulating it first if it is not cached."""
    from powerplane.config.loader import load_scenario

    _, path = load_scenario(scenario)
    key = f"{Path(scenario).stem}-d{days:g}-s{seed}-{code_version(path)}"
    out = cache / key
    if (out / "jobs.parquet").exists():
        return out
    from powerplane.runtime.simulate import SimulateOptions, simulate

    cache.mkdir(parents=True, exist_ok=True)
    _err.print(f"simulating {scenario} for {days:g} days, seed {seed} -> {out}")
    simulate(SimulateOptions(scenario=scenario, hours=24.0 * days, seed=seed, out=out, force=True))
    return out


@app.command()
def backtest(
    out: Annotated[Path, typer.Option(help="output directory (backtest.json, band plots)")],
    scenario: Annotated[list[str], typer.Option(help="scenario(s) to simulate, repeatable")] = ["texas"],  # noqa: B006
    days: Annotated[float, typer.Option(help="days per twin run")] = 7.0,
    seeds: Annotated[int, typer.Option(help="seeds per scenario (0..N-1)")] = 1,
    run_dir: Annotated[list[Path], typer.Option("--run", help="an existing simulate run to backtest too")] = [],  # noqa: B006
    cache: Annotated[Path, typer.Option(help="cache of twin runs")] = DEFAULT_CACHE,
    merge: Annotated[
        list[Path], typer.Option(help="a backtest.json (or its folder) whose runs join the summary, repeatable")
    ] = [],  # noqa: B006
    statsforecast: Annotated[bool, typer.Option(help="include AutoETS and MSTL")] = True,
    traces: Annotated[bool, typer.Option(help="also backtest the real Azure inference arrival traces")] = True,
    register: Annotated[bool, typer.Option(help="register the first run's job-aware model (champion if none)")] = False,
    registry: RegistryOpt = DEFAULT_PATH,
    force: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print backtest.json")] = False,
) -> None:
    """Rolling-origin backtests of the job-aware forecaster against the baselines; writes DIR/backtest.json."""
    from powerplane.forecast.backtest import backtest_run, plot_bands, public, summarize, targets
    from powerplane.forecast.data import load_run

    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(f"{out} exists (use --force to replace it)")
    try:
        dirs = [cached_run(s, days, k, cache) for s in scenario for k in range(seeds)] + list(run_dir)
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        results = []
        for d in dirs:
            _err.print(f"backtesting {d}")
            res = backtest_run(load_run(d), with_statsforecast=statsforecast)
            plot_bands(res, tmp / f"bands_{res['run']}.png")
            results.append(res)
        runs = [public(r) for r in results]
        run_dirs = [str(d) for d in dirs]
        for prev in merge:  # backtests run apart (in parallel, on other machines) join this summary
            mf = prev / "backtest.json" if prev.is_dir() else prev
            if not mf.exists():
                raise PowerPlaneError(f"--merge {prev}: no backtest.json there")
            old = json.loads(mf.read_text())
            runs += old.get("runs", [])
            run_dirs += old.get("run_dirs", [])
            for png in mf.parent.glob("bands_*.png"):
                shutil.copy(png, tmp / png.name)
        if not runs:
            raise PowerPlaneError("nothing to backtest (no --scenario seeds, --run or --merge)")
        summary = summarize(runs)
        doc: dict[str, Any] = {
            "scenarios": scenario,
            "days": days,
            "seeds": list(range(seeds)),
            "run_dirs": run_dirs,  # what was backtested: the simulated seeds, every --run and the merged ones
            "horizons": ["1min", "15min", "1h", "24h"],
            "mase_scale": "training-window MAE of persistence at the same horizon",
            "summary": summary,
            "targets": targets(summary, runs),
            "runs": runs,
        }
        if traces:
            from powerplane.forecast.traces import backtest_traces

            doc["traces"] = backtest_traces()
        if register and results:
            model = results[0]["_model"]
            reg = Registry(registry)
            now = WallClock().now_s()
            v = reg.register("job-aware", model.to_bytes(), model.meta, now)
            doc["registered"] = v
            if reg.alias("champion") is None:
                reg.promote(v, "champion", t_s=now, by="backtest", reason="first model")
            else:
                reg.promote(v, "challenger", t_s=now, by="backtest", reason="new backtest")
        (tmp / "backtest.json").write_text(json.dumps(doc, indent=1, default=float))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps(doc, indent=1, default=float))
        return
    table = Table("model", "horizon", "MAE MW", "MASE", "pinball MW", "P10-P90 cov")
    for m, by_h in summary.items():
        for h, c in by_h.items():
            if c["mae_w"] is None:
                continue
            table.add_row(
                m,
                h,
                f"{c['mae_w'] / 1e6:.3f}",
                f"{c['mase']:.3f}",
                f"{c['pinball_w'] / 1e6:.3f}",
                f"{c['coverage_p10_p90']:.2f}",
            )
    _out.print(table)
    _out.print(json.dumps(doc["targets"], indent=1))
    _out.print(f"wrote {out}/backtest.json")


def _registry(path: Path) -> Registry:
    return Registry(path)


@models_app.command("list")
def models_list(registry: RegistryOpt = DEFAULT_PATH, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every model with its aliases and 15-minute backtest error."""
    recs = _registry(registry).models()
    if as_json:
        print(json.dumps([r.to_dict() for r in recs], indent=1))
        return
    table = Table("version", "name", "aliases", "trained on", "15-min MAE kW", "15-min MASE")
    for r in recs:
        bt = r.metadata.get("backtest", {}).get("15min", {})
        mae = bt.get("mae_w")
        mase = bt.get("mase")
        table.add_row(
            r.version,
            r.name,
            ",".join(r.aliases),
            str(r.metadata.get("training_window", {}).get("run", "")),
            f"{mae / 1e3:.0f}" if mae is not None else "",
            f"{mase:.3f}" if mase is not None else "",
        )
    _out.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="a version or an alias")], registry: RegistryOpt = DEFAULT_PATH
) -> None:
    """A model's metadata and the history of its aliases, as JSON."""
    reg = _registry(registry)
    try:
        rec = reg.show(version)
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from exc
    doc = rec.to_dict()
    doc["alias_history"] = [h for h in reg.history() if rec.version in (h["from_version"], h["to_version"])]
    print(json.dumps(doc, indent=1, default=float))


@models_app.command("promote")
def models_promote(
    version: str,
    alias: AliasOpt = "champion",
    reason: ReasonOpt = "",
    by: ByOpt = "cli",
    registry: RegistryOpt = DEFAULT_PATH,
) -> None:
    """Point an alias at a version (the move is kept in the audit history)."""
    try:
        old = _registry(registry).promote(version, alias, t_s=WallClock().now_s(), by=by, reason=reason)
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from exc
    print(json.dumps({"alias": alias, "from_version": old, "to_version": version}))


@models_app.command("rollback")
def models_rollback(
    alias: AliasOpt = "champion",
    reason: ReasonOpt = "",
    by: ByOpt = "cli",
    registry: RegistryOpt = DEFAULT_PATH,
) -> None:
    """Restore the alias's previous holder; says what it rolled back from."""
    try:
        frm, to = _registry(registry).rollback(alias, t_s=WallClock().now_s(), by=by, reason=reason)
    except PowerPlaneError as exc:
        raise _fail(str(exc)) from exc
    print(json.dumps({"alias": alias, "rolled_back_from": frm, "restored": to}))
