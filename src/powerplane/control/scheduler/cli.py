"""``powerplane schedule``: the GPU pool scheduler's commands (a typer sub-app; the main CLI mounts it).

    powerplane schedule replay ../shared/data/alibaba_openb_pod_list_default.csv [--policy binpack] --json

Also runnable alone: ``python -m powerplane.control.scheduler.cli replay TRACE --json``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from powerplane.control.scheduler.policy import POLICIES
from powerplane.control.scheduler.replay import (
    DEFAULT_POOL_SCALE,
    DEFAULT_SPEEDUP,
    DEFAULT_START_QUANTILE,
    QOS_CLASSES,
    replay,
)
from powerplane.core.units import parse_duration_s

app = typer.Typer(
    help="The GPU pool scheduler: replay a real GPU trace against a FIFO first-fit baseline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """The GPU pool scheduler (keeps ``replay`` a sub-command even while it is the only one)."""


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def parse_qos_map(text: str) -> dict[str, str]:
    """``"LS=core,BE=low"`` -> ``{"LS": "core", "BE": "low"}``.

    >>> parse_qos_map("LS=core, BE=low")
    {'LS': 'core', 'BE': 'low'}
    """
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"not QOS=class: {part.strip()!r}")
        qos, cls = (p.strip() for p in part.split("=", 1))
        out[qos] = cls
    return out


@app.command("replay")
def replay_cmd(
    trace: Annotated[Path, typer.Argument(help="openb pod list CSV (alibaba_openb_pod_list_*.csv)")],
    policy: Annotated[str, typer.Option(help=f"placement of our scheduler: {', '.join(POLICIES)}")] = "binpack",
    nodes: Annotated[
        Path | None, typer.Option(help="node list CSV (default: the one beside the trace, else the packaged copy)")
    ] = None,
    speedup: Annotated[float, typer.Option(help="divide the gaps between arrivals by this (lifetimes kept)")] = (
        DEFAULT_SPEEDUP
    ),
    pool_scale: Annotated[
        float, typer.Option(help="share of the node list's nodes in the pool, per model and node size")
    ] = DEFAULT_POOL_SCALE,
    start_quantile: Annotated[
        float, typer.Option(help="start at this quantile of creation times (earlier pods arrive then)")
    ] = DEFAULT_START_QUANTILE,
    bin: Annotated[str, typer.Option(help="bin of the allocation-rate series (simulated time), e.g. 10min")] = (
        "10min"
    ),
    checkpoint_interval: Annotated[str, typer.Option(help="checkpoint interval of preemptible jobs")] = "30min",
    qos_map: Annotated[str, typer.Option(help="QoS to priority class, e.g. LS=core,BE=low")] = ",".join(
        f"{k}={v}" for k, v in QOS_CLASSES.items()
    ),
    baseline: Annotated[bool, typer.Option(help="also run the FIFO first-fit baseline")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole report as JSON")] = False,
) -> None:
    """Replay a real GPU trace (fractional requests, QoS classes, real arrivals) on a pool shaped like its node
    list, with our scheduler and the FIFO first-fit baseline side by side."""
    if policy not in POLICIES:
        raise _fail(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    if not trace.is_file():
        raise _fail(f"no such trace file: {trace}")
    if nodes is not None and not nodes.is_file():
        raise _fail(f"no such node list: {nodes}")
    try:
        bin_s = parse_duration_s(bin)
        ckpt_s = parse_duration_s(checkpoint_interval)
        qos = parse_qos_map(qos_map)
        report = replay(
            trace,
            node_list=nodes,
            policy=policy,
            speedup=speedup,
            bin_s=bin_s,
            qos_classes=qos,
            checkpoint_interval_s=ckpt_s,
            baseline=baseline,
            pool_scale=pool_scale,
            start_quantile=start_quantile,
        )
    except (ValueError, KeyError, OSError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        sys.stdout.write(json.dumps(_finite(report), indent=1) + "\n")
        return
    _print_table(report)


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _print_table(report: dict[str, Any]) -> None:
    console = Console()
    pool = report["pool"]
    console.print(
        f"{report['gpu_pods']:,} GPU pods on {pool['nodes']} nodes / {pool['gpus']:,} GPUs "
        f"(pool scale {report['pool_scale']:g}, speedup {report['speedup']:g}x, offered load "
        f"{report['offered_load']:.2f}); wall {report['wall_s']:.1f} s"
    )
    runs = report["runs"]
    table = Table("metric", *runs)
    rows: list[tuple[str, str]] = [
        ("alloc_rate_avg", "{:.1%}"),
        ("fragmentation_avg", "{:.2%}"),
        ("preemptions", "{:,}"),
        ("lost_work_gpu_h", "{:.1f}"),
        ("completed", "{:,}"),
        ("rejected", "{:,}"),
        ("wall_s", "{:.2f}"),
    ]
    for key, fmt in rows:
        table.add_row(key, *(fmt.format(r[key]) for r in runs.values()))
    for cls in next(iter(runs.values()))["queue_delay_s"]:
        table.add_row(
            f"queue delay {cls} mean / p95 s",
            *(f"{r['queue_delay_s'][cls]['mean']:,.0f} / {r['queue_delay_s'][cls]['p95']:,.0f}" for r in runs.values()),
        )
    console.print(table)
    if "comparison" in report:
        console.print(f"allocation rate: {report['comparison']['alloc_rate_points']:+.1f} points vs FIFO first-fit")


if __name__ == "__main__":
    app()
