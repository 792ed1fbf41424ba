"""Operations wired to a twin: alert engine, notifier and healer on the twin's cycle, with injected faults.

This is the hook the ``powerplane alerts test`` command and the operations end-to-end tests run; the live
runtime (``runtime/live.py``) calls the same :class:`~powerplane.ops.alerts.AlertEngine` on its own cycle.
:class:`TwinExecutor` is how the healer acts on the twin: drain and undrain nodes, cordon and uncordon single GPUs
through the twin's GPU pool scheduler (jobs requeued from their checkpoints and placed elsewhere), restart stalled
jobs, reset GPUs.

It measures what the issue asks: for every injected Xid fault, the time from the fault to the alert (sim time:
the fault shows in the next reading, one step later) and the compute time from that reading to the alert; and
when the affected job runs again, against the restart delay the twin drew for it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from powerplane.core.clock import perf_counter_s
from powerplane.ops.alerts import AlertEngine
from powerplane.ops.heal import Healer
from powerplane.ops.notify import Notifier
from powerplane.telemetry.snapshot import Snapshot
from powerplane.telemetry.tracker import Tracker
from powerplane.twin.jobs import State
from powerplane.twin.twin import Twin

DETECT_RULES = ("GpuXid", "GpuFallenOffBus", "GpuEccDoubleBit")


class TwinExecutor:
    """The healer's hands on the twin: its scheduler (drain/undrain, cordon/uncordon), its jobs and its GPUs'
    health."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self.n_nodes = twin.topo.n_nodes
        self.n_gpus = twin.topo.n_gpus
        self._node_gpus = [np.flatnonzero(twin.topo.gpu_node == n) for n in range(twin.topo.n_nodes)]

    def node_of_gpu(self, gpu: int) -> int:
        return int(self.twin.topo.gpu_node[gpu])

    def job_of_gpu(self, gpu: int) -> int:
        return int(self.twin.workload.gpu_job[gpu])

    def drain_node(self, node: int, now_s: float) -> list[int]:
        return self.twin.workload.drain_node(node, now_s)

    def undrain_node(self, node: int, now_s: float) -> None:
        self.twin.workload.undrain_node(node, now_s)

    def cordon_gpu(self, gpu: int, now_s: float) -> list[int]:
        return self.twin.workload.cordon_gpu(gpu, now_s)

    def uncordon_gpu(self, gpu: int, now_s: float) -> None:
        self.twin.workload.uncordon_gpu(gpu, now_s)

    def restart_job(self, job: int, now_s: float) -> bool:
        return self.twin.workload.restart_now(job, now_s)

    def reset_gpu(self, gpu: int, now_s: float) -> bool:
        self.twin.health.reset([gpu])
        return True

    def reboot_node(self, node: int, now_s: float) -> bool:
        self.twin.health.reset(self._node_gpus[node])
        return True


def _attach(notifier: Notifier | None, engine: AlertEngine) -> None:
    """The notifier holds back what the engine mutes and groups by the rule file's defaults."""
    if notifier is not None:
        if notifier.mutes is None:
            notifier.mutes = engine
        if notifier.rule_defaults is None:
            notifier.rule_defaults = engine.rule_file.defaults


class OpsStack:
    """The alert engine with the healer and the notifier behind it, behind the engine's own interface: a live
    runtime that takes an ``AlertEngine`` can take this instead (``evaluate``, ``active``, ``acknowledge``,
    ``silence``, ``unsilence``), and every cycle's transitions are healed and notified as well."""

    def __init__(self, engine: AlertEngine, healer: Healer | None = None, notifier: Notifier | None = None) -> None:
        self.engine = engine
        self.healer = healer
        self.notifier = notifier
        self.heal_actions: list[dict[str, Any]] = []
        _attach(notifier, engine)

    def evaluate(self, snapshot: Snapshot, context: dict[str, float]) -> list[dict[str, Any]]:
        out = self.engine.evaluate(snapshot, context)
        t = float(context.get("t_s", snapshot.t_s))
        if self.healer is not None:
            self.heal_actions += [a.to_dict() for a in self.healer.handle(out, t)]
        if self.notifier is not None:
            self.notifier.step(out, t)
        return out

    def active(self) -> list[dict[str, Any]]:
        return self.engine.active()

    def acknowledge(self, alert_id: str, by: str) -> bool:
        return self.engine.acknowledge(alert_id, by)

    def silence(self, matchers: dict[str, str], duration_s: float, by: str, comment: str = "") -> str:
        return self.engine.silence(matchers, duration_s, by, comment)

    def unsilence(self, silence_id: str, by: str) -> bool:
        return self.engine.unsilence(silence_id, by)

    @classmethod
    def for_twin(cls, twin: Twin, notifier: Notifier | None = None, audit_path: str | None = None) -> OpsStack:
        """Default rules, a healer acting on the twin, an optional notifier, one audit trail."""
        from powerplane.ops.audit import AuditLog

        audit = AuditLog(audit_path)
        engine = AlertEngine.with_default_rules(twin.site, twin.topo, audit)
        engine.gpu_job = twin.workload.gpu_job
        return cls(engine, Healer(TwinExecutor(twin), audit), notifier)


@dataclass
class FaultRecord:
    """One injected (or drawn) Xid fault and what operations made of it."""

    xid: int
    gpu: int
    job: int
    t_fault_s: float
    restart_delay_s: float  # what the twin drew: when the job would restart by itself
    t_detect_s: float | None = None
    reading_to_alert_ms: float | None = None
    rule: str = ""
    healed_by: list[str] = field(default_factory=list)
    t_running_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        run = None if self.t_running_s is None else self.t_running_s - self.t_fault_s
        det = None if self.t_detect_s is None else self.t_detect_s - self.t_fault_s
        return {
            "xid": self.xid,
            "gpu": self.gpu,
            "job": self.job,
            "t_fault_s": self.t_fault_s,
            "detected_after_s": det,
            "reading_to_alert_ms": self.reading_to_alert_ms,
            "rule": self.rule,
            "healed_by": self.healed_by,
            "running_again_after_s": run,
            "restart_delay_s": self.restart_delay_s,
            "within_restart_delay": run is not None and run <= self.restart_delay_s,
        }


class OpsLoop:
    """Twin -> Tracker -> AlertEngine -> Healer -> Notifier, one step per cycle."""

    def __init__(
        self,
        twin: Twin,
        engine: AlertEngine,
        healer: Healer | None = None,
        notifier: Notifier | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.twin = twin
        self.engine = engine
        self.healer = healer
        self.notifier = notifier
        self.tracker = tracker or Tracker(twin.topo, twin.site)
        engine.gpu_job = twin.workload.gpu_job
        _attach(notifier, engine)
        site = twin.site
        self.contract_w = site.electrical.contract_demand_kw * 1e3
        self.nominal_hz = float(site.grid.frequency_hz)
        self._grid = deque[tuple[float, float]]()
        self.faults: list[FaultRecord] = []
        self._seen_events = len(twin.workload.xid_events)
        self.transitions: list[dict[str, Any]] = []
        self.heal_actions: list[dict[str, Any]] = []
        self.eval_ms: list[float] = []
        self.cycles = 0

    def context(self, snap: Snapshot, cycle_ms: float) -> dict[str, float]:
        p = self.twin._last.plant if self.twin._last is not None else None
        grid_w = float(p.grid_power_w[-1]) if p is not None else float("nan")
        t = snap.t_s
        self._grid.append((t, grid_w))
        while self._grid and t - self._grid[0][0] >= 900.0:
            self._grid.popleft()
        return {
            "t_s": t,
            "cycle_lag_s": 0.0,
            "cycle_ms": cycle_ms,
            "source_age_s": max(t - snap.t_s, 0.0),
            "planner_failed": 0.0,
            "safe_mode": 0.0,
            "grid_power_w": grid_w,
            "demand_15min_w": float(np.mean([g for _, g in self._grid])),
            "contract_w": self.contract_w,
            "frequency_hz": float(p.frequency_hz[-1]) if p is not None else float("nan"),
            "nominal_frequency_hz": self.nominal_hz,
            "islanded": float(p.islanded[-1]) if p is not None else 0.0,
        }

    def step(self) -> list[dict[str, Any]]:
        t0 = perf_counter_s()
        twin, wl = self.twin, self.twin.workload
        twin.advance(1)
        frame = twin.read()
        self._note_faults()
        snap = self.tracker.ingest(frame, wl.gpu_job)
        t_read = perf_counter_s()
        out = self.engine.evaluate(snap, self.context(snap, (t_read - t0) * 1e3))
        t_alert = perf_counter_s()
        self.eval_ms.append(self.engine.last_eval_ms)
        self._match_detections(out, snap.t_s, (t_alert - t_read) * 1e3)
        if self.healer is not None:
            acts = self.healer.handle(out, snap.t_s)
            for a in acts:
                d = a.to_dict()
                self.heal_actions.append(d)
                for f in self.faults:
                    if f.t_running_s is None and str(d.get("alert_id", "")).endswith(f":gpu:{f.gpu}"):
                        f.healed_by.append(a.kind)
        if self.notifier is not None:
            self.notifier.step(out, snap.t_s)
        self._check_running(snap.t_s)
        self.transitions.extend(out)
        self.cycles += 1
        return out

    def _note_faults(self) -> None:
        wl = self.twin.workload
        for ev in wl.xid_events[self._seen_events :]:
            delay = float(wl.jobs.state_end_s[ev.job] - ev.t_s)
            self.faults.append(FaultRecord(ev.xid, ev.gpu, ev.job, ev.t_s, delay))
        self._seen_events = len(wl.xid_events)

    def _match_detections(self, out: list[dict[str, Any]], t_s: float, ms: float) -> None:
        for tr in out:
            if tr["transition"] != "firing" or tr["rule"] not in DETECT_RULES:
                continue
            gpu = int(tr["labels"].get("gpu_index", -1))
            for f in self.faults:
                if f.gpu == gpu and f.t_detect_s is None and f.t_fault_s <= t_s:
                    f.t_detect_s, f.reading_to_alert_ms, f.rule = t_s, ms, tr["rule"]

    def _check_running(self, t_s: float) -> None:
        jobs = self.twin.workload.jobs
        for f in self.faults:
            if f.t_running_s is None and jobs.state[f.job] == State.RUNNING and jobs.state_start_s[f.job] > f.t_fault_s:
                f.t_running_s = float(jobs.state_start_s[f.job])

    def inject_xid(self, xid: int, job: int | None = None) -> tuple[int, int]:
        """Fault a running training job's GPU with ``xid`` at the twin's current time; returns (job, gpu)."""
        wl = self.twin.workload
        if job is None:
            running = [int(j) for j in wl.active_ids() if wl.jobs.state[j] == State.RUNNING and wl.jobs.n_gpus[j] >= 8]
            taken = {f.job for f in self.faults}
            free = [j for j in running if j not in taken]
            if not free:
                raise RuntimeError("no running job to fault")
            job = free[0]
        gpu = int(wl.jobs.gpus[job][0])
        wl.inject_fault(job, self.twin.now_s, xid=xid, gpu=gpu)
        return job, gpu

    def inject_cooling_failure(self, unit: int, duration_s: float, rise_c: float = 12.0) -> None:
        t = self.twin.now_s
        self.twin.plant.cooling_failures.append((t, t + duration_s, unit, rise_c))

    def summary(self) -> dict[str, Any]:
        fired: dict[str, dict[str, Any]] = {}
        for tr in self.transitions:
            if tr["transition"] != "firing":
                continue
            s = fired.setdefault(tr["rule"], {"severity": tr["severity"], "count": 0, "first_s": tr["since_s"]})
            s["count"] += 1
        ev = np.array(self.eval_ms) if self.eval_ms else np.zeros(1)
        return {
            "cycles": self.cycles,
            "fired": fired,
            "faults": [f.to_dict() for f in self.faults],
            "heal_actions": self.heal_actions,
            "eval_ms": {"median": float(np.median(ev)), "p99": float(np.percentile(ev, 99)), "max": float(ev.max())},
            "engine": dict(self.engine.stats),
        }


# ------------------------------------------------------------------------------------------- the fault test

# (share of the run, fault): Xid faults on running training jobs, a cooling unit failing, a PCIe replay storm.
# The drains are spaced so a 1-hour run on the small site (32 nodes: 1 drain per 10 min) stays inside the guard rail.
DEFAULT_PLAN: tuple[tuple[float, str, int], ...] = (
    (0.05, "xid", 79),
    (0.15, "xid", 94),
    (0.25, "xid", 48),
    (0.35, "cooling", 0),
    (0.45, "pcie", 20),
    (0.50, "xid", 74),
    (0.60, "xid", 13),
    (0.70, "brake", 8),
)


def run_fault_test(
    scenario: str,
    hours: float,
    seed: int = 0,
    heal: bool = True,
    notifier: Notifier | None = None,
    audit_path: str | None = None,
    rules_path: str | None = None,
    plan: tuple[tuple[float, str, int], ...] = DEFAULT_PLAN,
) -> dict[str, Any]:
    """Run the twin for ``hours`` with the injected faults of ``plan``; return what fired, what was healed and
    the detection and restart measurements."""
    from powerplane.config import load_scenario
    from powerplane.ops.audit import AuditLog
    from powerplane.ops.heal import HealConfig
    from powerplane.ops.rules import load_rule_file

    site, site_file = load_scenario(scenario)
    twin = Twin(site, site_file, seed=seed)
    audit = AuditLog(audit_path)
    rules = load_rule_file(rules_path)
    engine = AlertEngine(rules, twin.topo, site, audit)
    healer = Healer(TwinExecutor(twin), audit, HealConfig(enabled=heal))
    loop = OpsLoop(twin, engine, healer, notifier)
    steps = max(1, round(hours * 3600.0 / twin.dt_s))
    todo = sorted((max(1, int(share * steps)), kind, arg) for share, kind, arg in plan)
    injected: list[dict[str, Any]] = []
    t_start = perf_counter_s()
    for k in range(steps):
        while todo and todo[0][0] == k:
            _, kind, arg = todo.pop(0)
            injected.append(_inject(loop, kind, arg))
        loop.step()
    out = loop.summary()
    out.update(
        scenario=scenario,
        hours=hours,
        gpus=twin.topo.n_gpus,
        injected=injected,
        heal=healer.summary(),
        wall_s=perf_counter_s() - t_start,
        audit_records=len(audit.records()),
    )
    if notifier is not None:
        out["outbox_pending"] = notifier.outbox.pending()
        out["notifications_queued"] = len(notifier.sent)
    return out


def _inject(loop: OpsLoop, kind: str, arg: int) -> dict[str, Any]:
    t = loop.twin.now_s
    if kind == "xid":
        job, gpu = loop.inject_xid(arg)
        return {"t_s": t, "fault": f"xid {arg}", "job": job, "gpu": gpu}
    if kind == "cooling":
        loop.inject_cooling_failure(arg, 600.0)
        return {"t_s": t, "fault": f"cooling unit {arg} fails for 600 s"}
    if kind == "pcie":
        gpu = int(loop.twin.topo.n_gpus // 2)
        loop.twin.health.inject("pcie_replay", [gpu], t, per_s=float(arg), duration_s=120.0)
        return {"t_s": t, "fault": f"{arg} PCIe replays/s on GPU {gpu} for 120 s", "gpu": gpu}
    if kind == "brake":
        gpus = list(range(arg))
        loop.twin.health.inject("power_brake", gpus, t, duration_s=60.0)
        return {"t_s": t, "fault": f"power brake on GPUs 0-{arg - 1} for 60 s"}
    raise ValueError(f"unknown fault kind {kind!r}")


def register_cli(app: Any) -> None:
    """Add ``alerts test`` to the ``powerplane alerts`` sub-app (the command needs the twin, so it lives here)."""
    import json

    from rich.console import Console
    from rich.table import Table

    @app.command("test")
    def test(
        scenario: Annotated[str, typer.Option(help="site scenario to run")] = "small",
        hours: Annotated[float, typer.Option(min=0.01, help="simulated hours (1 s steps)")] = 1.0,
        seed: Annotated[int, typer.Option(help="twin seed")] = 0,
        heal: Annotated[bool, typer.Option(help="let the self-healing act")] = True,
        rules: Annotated[Path | None, typer.Option(help="rule file (default: the shipped rules)")] = None,
        notify: Annotated[
            Path | None, typer.Option(help="notification config (YAML); alerts go through the outbox")
        ] = None,
        outbox: Annotated[Path, typer.Option(help="outbox file, with --notify")] = Path("pp-outbox.sqlite"),
        audit: Annotated[Path | None, typer.Option(help="write the audit trail (JSONL) here")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="write the full result as JSON here")] = None,
    ) -> None:
        """Run the twin with injected Xid 79/94/48/74/13 faults, a cooling failure, a PCIe replay storm and a power
        brake; print what fired, what was healed, detection latency and when the affected jobs ran again."""
        from powerplane.ops.notify import NotifyConfig
        from powerplane.ops.outbox import Outbox

        console = Console()
        notifier = None
        if notify is not None:
            try:
                cfg = NotifyConfig.load(notify)
            except ValueError as e:
                Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}")
                raise typer.Exit(2) from None
            notifier = Notifier(cfg, Outbox(outbox, cfg.retry))
        out = run_fault_test(
            scenario, hours, seed, heal, notifier, str(audit) if audit else None, str(rules) if rules else None
        )
        t = Table(
            "rule", "severity", "fired", title=f"{scenario}: {out['gpus']} GPUs, {hours:g} h, {out['cycles']} cycles"
        )
        for rule, s in sorted(out["fired"].items()):
            t.add_row(rule, s["severity"], str(s["count"]))
        console.print(t)
        f = Table(
            "xid",
            "gpu",
            "job",
            "detected after [s]",
            "reading->alert [ms]",
            "healed by",
            "running again [s]",
            "restart delay [s]",
            "within",
            title="faults",
        )
        for x in out["faults"]:
            f.add_row(
                str(x["xid"]),
                str(x["gpu"]),
                str(x["job"]),
                _num(x["detected_after_s"]),
                _num(x["reading_to_alert_ms"], 2),
                ", ".join(x["healed_by"]) or "-",
                _num(x["running_again_after_s"]),
                _num(x["restart_delay_s"]),
                "yes" if x["within_restart_delay"] else "no",
            )
        console.print(f)
        h = out["heal"]
        console.print(
            f"self-healing: {h['actions']}  limits per window: {h['drain_limit']} node drains, "
            f"{h['isolate_limit']} GPU isolations"
        )
        ev = out["eval_ms"]
        console.print(
            f"rule evaluation: median {ev['median']:.2f} ms, p99 {ev['p99']:.2f} ms; run took {out['wall_s']:.1f} s"
        )
        if notifier is not None:
            console.print(
                f"notifications queued {out['notifications_queued']}, still in the outbox {out['outbox_pending']}"
            )
            notifier.outbox.close()
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(out, indent=1, default=str))


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
