"""``powerplane logs``: search the stored log events and analyze a log file (a typer sub-app; the main CLI mounts it).

    powerplane logs analyze /var/log/kern.log --json [--scenario texas] [--db logs.duckdb]
    powerplane logs search 'xid:79 host:hall-a-r00-k00-n0' --db logs.duckdb --json

Also runnable alone: ``python -m powerplane.ops.cli analyze FILE --json``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from powerplane.core.clock import perf_counter_s

DEFAULT_DB = "powerplane-logs.duckdb"

app = typer.Typer(
    help="Kernel and system logs: Drain3 templates, anomalies, Xid faults, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_out = Console()
_err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Kernel and system logs: Drain3 templates, anomalies, Xid faults, search."""


def analyze_file(
    path: Path, scenario: str | None = None, top: int = 50, threshold: float = 0.5, db: Path | None = None
) -> dict[str, Any]:
    """Mine a whole log file: templates, anomalies, Xid events with actions, per-host and per-GPU summaries, and,
    when the file carries LogHub labels, how the anomaly flags compare with them."""
    from powerplane.ops.logs import Correlator, LogMiner, LogStore, worst_action

    corr = Correlator()
    if scenario is not None:
        from powerplane.config import load_scenario
        from powerplane.ops.logs import twin_pci_map
        from powerplane.topology import Topology

        topo = Topology.from_site(load_scenario(scenario)[0])
        corr = Correlator(topo, twin_pci_map(topo))
    miner = LogMiner(corr)
    t0 = perf_counter_s()
    with path.open("r", encoding="utf-8", errors="replace") as f:
        events = miner.process_lines(f)
    seconds = perf_counter_s() - t0
    if db is not None:
        with LogStore(db) as store:
            store.add(events)
            store.wait_indexed()  # a one-shot ingest leaves the file fully indexed

    anomalies = sorted((e for e in events if e.anomaly_score >= threshold), key=lambda e: (-e.anomaly_score, e.seq))
    hosts: dict[str, dict[str, Any]] = defaultdict(lambda: {"lines": 0, "anomalies": 0, "xid": Counter()})
    gpus: dict[tuple[str, str], dict[str, Any]] = {}
    xids = []
    for e in events:
        h = hosts[e.host or "?"]
        h["lines"] += 1
        h["anomalies"] += e.anomaly_score >= threshold
        if e.xid is None:
            continue
        x = e.xid
        h["xid"][x.xid] += 1
        key = (e.host or "?", x.pci_bus_id)
        g = gpus.setdefault(key, {"host": key[0], "pci_bus_id": key[1], "gpu": e.gpu, "xid": Counter(), "actions": []})
        g["xid"][x.xid] += 1
        g["actions"].append(x.action.value)
        xids.append(
            {
                "line": e.seq + 1, "t_s": e.t_s, "host": e.host, "pci_bus_id": x.pci_bus_id, "gpu": e.gpu,
                "gpu_instance": x.gpu_instance, "job": e.job, "xid": x.xid, "name": x.name, "action": x.action.value,
                "pid": x.pid, "process": x.process, "message": x.message,
            }
        )  # fmt: skip
    for h in hosts.values():
        h["xid"] = {str(k): v for k, v in sorted(h["xid"].items())}
    gpu_rows = []
    for g in gpus.values():
        g["worst_action"] = worst_action(g.pop("actions"))
        g["xid"] = {str(k): v for k, v in sorted(g["xid"].items())}
        gpu_rows.append(g)
    for name, h in hosts.items():
        h["worst_action"] = worst_action(g["worst_action"] for g in gpu_rows if g["host"] == name)
    templates = miner.template_table()
    result: dict[str, Any] = {
        "file": str(path),
        "lines": len(events),
        "seconds": round(seconds, 3),
        "lines_per_s": round(len(events) / seconds) if seconds > 0 else None,
        "n_templates": len(templates),
        "templates": templates[:top],
        "n_anomalous": len(anomalies),
        "anomalies": [
            {
                "line": e.seq + 1,
                "t_s": e.t_s,
                "host": e.host,
                "score": round(e.anomaly_score, 3),
                "reasons": e.reasons,
                "template_id": e.template_id,
                "text": e.line,
            }
            for e in anomalies[:top]
        ],
        "xid_events": xids,
        "hosts": dict(sorted(hosts.items())),
        "gpus": sorted(gpu_rows, key=lambda g: (g["host"], g["pci_bus_id"])),
    }
    labelled = [e for e in events if e.label is not None]
    if labelled:
        tp = sum(1 for e in labelled if e.label != "-" and e.anomaly_score >= threshold)
        fp = sum(1 for e in labelled if e.label == "-" and e.anomaly_score >= threshold)
        fn = sum(1 for e in labelled if e.label != "-" and e.anomaly_score < threshold)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        result["labels"] = {
            "lines": len(labelled), "anomalous": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        }  # fmt: skip
    return result


@app.command()
def analyze(
    file: Annotated[Path, typer.Argument(help="A log file: syslog, journal, dmesg, RFC 5424, LogHub BGL/Thunderbird.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    scenario: Annotated[
        str | None, typer.Option("--scenario", help="Resolve hosts/GPUs against this site's topology.")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="How many templates and anomalies to list.")] = 50,
    threshold: Annotated[float, typer.Option("--threshold", help="Anomaly score that flags a line.")] = 0.5,
    db: Annotated[Path | None, typer.Option("--db", help="Also store the events in this DuckDB file.")] = None,
) -> None:
    """Mine a whole log file: templates with counts, anomalies, Xid events with actions, per-host/GPU summary."""
    if not file.is_file():
        _err.print(f"[bold red]error:[/] no such file: {file}")
        raise typer.Exit(2)
    try:
        res = analyze_file(file, scenario, top, threshold, db)
    except Exception as exc:  # configuration errors, unreadable files: one line, not a traceback
        _err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        sys.stdout.write(json.dumps(res, indent=1, default=str) + "\n")
        return
    _out.print(
        f"{res['lines']:,} lines, {res['n_templates']:,} templates, {res['n_anomalous']:,} anomalous, "
        f"{len(res['xid_events']):,} Xid events ({res['lines_per_s'] or 0:,} lines/s)"
    )
    t = Table("id", "count", "template", title="templates")
    for row in res["templates"][:20]:
        t.add_row(str(row["id"]), f"{row['count']:,}", row["template"])
    _out.print(t)
    if res["xid_events"]:
        x = Table("line", "host", "pci", "xid", "action", "message", title="Xid events")
        for ev in res["xid_events"][:top]:
            x.add_row(str(ev["line"]), str(ev["host"]), ev["pci_bus_id"], str(ev["xid"]), ev["action"], ev["message"])
        _out.print(x)
    a = Table("line", "score", "why", "text", title="anomalies")
    for ev in res["anomalies"][:20]:
        a.add_row(str(ev["line"]), f"{ev['score']:.2f}", ev["reasons"], ev["text"])
    _out.print(a)
    if "labels" in res:
        _out.print(f"labels: {res['labels']}")


@app.command()
def search(
    query: Annotated[
        str, typer.Argument(help='Words (word* for a prefix), "a phrase", host:, gpu:, job:, xid:, action:')
    ],
    db: Annotated[Path, typer.Option("--db", help="The DuckDB file of stored log events.")] = Path(DEFAULT_DB),
    limit: Annotated[int, typer.Option("--limit", help="At most this many events.")] = 50,
    min_score: Annotated[float, typer.Option("--min-score", help="Only events at least this anomalous.")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON.")] = False,
) -> None:
    """Full-text search of stored log events, newest first."""
    from powerplane.ops.logs import LogStore

    if not db.is_file():
        _err.print(f"[bold red]error:[/] no log database at {db}")
        raise typer.Exit(2)
    with LogStore(db) as store:
        rows = store.search(query, limit=limit, min_score=min_score)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1, default=str) + "\n")
        return
    t = Table("t_s", "host", "gpu", "job", "score", "xid", "action", "line", title=f"{len(rows)} events")
    for r in rows:
        t.add_row(
            "" if r["t_s"] is None else f"{r['t_s']:.0f}", str(r["host"]), str(r["gpu"]), str(r["job"]),
            f"{r['anomaly_score']:.2f}", "" if r["xid"] is None else str(r["xid"]), r["action"] or "", r["line"],
        )  # fmt: skip
    _out.print(t)


if __name__ == "__main__":
    app()
