"""What the embedded and the bus live runtimes share: options, command queue and results, the audit (in memory and
JSON lines with rollover), listeners, the cycle thread, alerts and forecasts, and the cycle and publish skeletons.

:class:`LiveCore` runs one cycle as: apply the queued operator commands -> :meth:`LiveCore._advance` (the
subclass: drive the site and energy, return the ingested snapshot) -> policy audit -> alerts -> forecasts ->
publish one :class:`~powerplane.runtime.live_state.LiveState` (the subclass gives the site, battery, demand-response
and jobs views). :class:`~powerplane.runtime.live.LiveRuntime` (embedded twin) and
:class:`~powerplane.runtime.live_bus.BusLiveRuntime` (NATS bus) override only what differs.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from powerplane.config.schema import SiteConfig
from powerplane.core.clock import Clock, WallClock
from powerplane.physics import tariff
from powerplane.runtime.live_commands import COMMAND_KINDS, CommandRefused, CommandResult, OperatorCommand
from powerplane.runtime.live_state import SITE_SERIES, CycleInfo, Ledger, LiveState, SeriesRing
from powerplane.runtime.live_view import clean, plan_view
from powerplane.telemetry.ring import GpuRing
from powerplane.telemetry.snapshot import Snapshot
from powerplane.telemetry.tracker import Tracker
from powerplane.topology import Topology

FORECAST_EVERY_S = 60.0
AUDIT_KEEP = 5000
JOB_FIELDS = ("kind", "priority", "n_gpus", "state", "submit_s", "start_s", "end_s", "energy_j", "deferrable")


@dataclass
class LiveOptions:
    scenario: str = "texas"
    speed: float = 1.0  # simulated seconds per wall second, 1..600
    period_s: float = 1.0  # wall seconds between cycles
    seed: int = 0
    policy: str = "mpc"
    state_dir: Path = Path("runs/cockpit")
    history: bool = True
    ring_samples: int = 300  # recent per-GPU samples kept for drill-down (one per cycle)
    forecast_registry: Path | None = None
    heal: bool = True  # the embedded runtime heals routine faults (ops/heal.py) through the twin's scheduler
    notify: Path | None = None  # a notification config (ops/notify.py): routes by severity, with an outbox
    audit_max_bytes: int = 64 * 2**20  # audit.jsonl rolls over to audit.1.jsonl past this size


def check_period(opts: LiveOptions) -> None:
    if not opts.period_s > 0:
        raise ValueError("the cycle period must be positive")


def _load_alert_engine(runtime: LiveCore) -> tuple[Any, str]:
    try:
        from powerplane.ops.alerts import AlertEngine  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, "no alert engine (powerplane.ops.alerts is not installed)"
    try:
        return AlertEngine.with_default_rules(runtime.site, runtime.topology), "ok"
    except Exception as exc:  # a broken engine must not stop the cockpit
        return None, f"alert engine failed to start: {exc}"


def _load_forecaster(runtime: LiveCore, registry: Path | None) -> tuple[Any, str]:
    try:  # the monitored forecaster: a LiveForecaster that also watches its own error (issue 5)
        from powerplane.forecast.monitor import MonitoredForecaster  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, "no forecaster (powerplane.forecast is not installed)"
    try:
        # a challenger trains in a worker thread: the cycle never waits for it
        return MonitoredForecaster(runtime.site, runtime.topology, registry_dir=registry, background=True), "ok"
    except Exception as exc:
        return None, f"forecaster failed to start: {exc}"


class LiveCore:
    """The shared composition root: ``start`` runs cycles in a thread; ``step`` runs one (tests)."""

    command_kinds: tuple[str, ...] = COMMAND_KINDS
    money_note = (
        "energy at the tariff's price since local midnight; saved: against the same load without "
        "batteries (demand charge billed monthly, not included)"
    )
    twin: Any  # the embedded twin, or what the shared code reads of it (the site's time, the GPUs' jobs)
    policy: Any  # the energy policy: ``name``, ``stats`` (audit, plan solves), ``plan``
    steps_per_cycle: int

    def __init__(
        self,
        opts: LiveOptions,
        site: SiteConfig,
        topology: Topology,
        monotonic_s: Callable[[], float],
        wall: Clock | None,
        alert_engine: Any,
        forecaster: Any,
        demand_dt_s: float,
    ) -> None:
        """Everything but the site's driver; ``demand_dt_s``: the time between two grid readings of the demand
        window (a twin step, or a cycle over the bus)."""
        self.opts = opts
        self._mono = monotonic_s
        self._wall = wall or WallClock()
        self.site = site
        self.topology = topology
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        self.ring = GpuRing(self.topology.n_gpus, max(2, opts.ring_samples))
        self.history: Any = None
        if opts.history:
            from powerplane.store.history import HistoryStore

            path = opts.state_dir / "history.duckdb"
            if path.exists():  # the site restarts at the scenario's start: keep the previous run beside it
                path.replace(path.with_name("history.prev.duckdb"))
                path.with_name("history.duckdb.wal").unlink(missing_ok=True)
            self.history = HistoryStore(path, self.topology)
        self.tracker = Tracker(self.topology, self.site, ring=self.ring, history=self.history)
        self._policy_audit_seen = 0
        self.series = SeriesRing(SITE_SERIES)
        self.ledger = Ledger()
        win = max(1, round(self.site.tariff.demand_window_min * 60.0 / demand_dt_s))
        self._grid_window = np.full(win, np.nan)
        self._grid_next = 0
        self._last_price = float("nan")
        self._prices: dict[str, list[float]] = {"t_s": [], "price_per_kwh": []}
        self._prices_key = -1
        # Commands: the web handlers put, the cycle takes.
        self._commands: queue.SimpleQueue[OperatorCommand] = queue.SimpleQueue()
        self._results: dict[str, CommandResult] = {}
        self._result_order: deque[str] = deque()
        self._results_lock = threading.Lock()
        self._seq = 0
        self.job_caps_w: dict[int, float] = {}
        # Audit: in memory (recent) and appended to a JSON-lines file in the state dir.
        self.audit_path = opts.state_dir / "audit.jsonl"
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_KEEP)
        self._audit_total = 0
        self._audit_lock = threading.Lock()
        # Alerts and forecasts, from the ops and forecast areas when installed.
        self.alerts, self.alert_status = _load_alert_engine(self) if alert_engine == "auto" else (alert_engine, "ok")
        if self.alerts is None and alert_engine is None:
            self.alert_status = "no alert engine"
        self.forecaster, self.forecast_status = (
            _load_forecaster(self, opts.forecast_registry) if forecaster == "auto" else (forecaster, "ok")
        )
        if self.forecaster is None and forecaster is None:
            self.forecast_status = "no forecaster"
        self._forecast: dict[str, Any] | None = None
        self._forecast_racks: dict[str, Any] | None = None
        self._next_forecast_s = -np.inf
        # Cycle bookkeeping.
        self.cycles = 0
        self.errors = 0
        self.last_error = ""
        self._cycle_ms: deque[float] = deque(maxlen=300)
        self._lag_s = 0.0
        self._state: LiveState | None = None
        self._listeners: list[Callable[[LiveState], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public interface

    @property
    def state(self) -> LiveState:
        if self._state is None:
            raise LookupError("the runtime has not completed a cycle yet")
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is not None

    def subscribe(self, listener: Callable[[LiveState], None]) -> None:
        """Call ``listener(state)`` from the cycle thread after each publish (it must be quick)."""
        self._listeners.append(listener)

    def submit(self, kind: str, args: dict[str, Any], actor: str) -> str:
        """Queue an operator command for the next cycle; returns its id. Raises CommandRefused on an unknown kind."""
        if kind not in self.command_kinds:
            raise CommandRefused(f"unknown command {kind!r}; valid: {', '.join(self.command_kinds)}")
        with self._results_lock:
            self._seq += 1
            cid = f"cmd-{self._seq}"
            self._results[cid] = CommandResult(cid, kind, "queued")
            self._result_order.append(cid)
            while len(self._result_order) > 1000:
                self._results.pop(self._result_order.popleft(), None)
        self._commands.put(OperatorCommand(cid, kind, dict(args), actor))
        return cid

    def result(self, command_id: str) -> dict[str, Any] | None:
        with self._results_lock:
            r = self._results.get(command_id)
            return None if r is None else r.to_dict()

    def audit(self, limit: int = 200, actor: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The newest audit records first (at most ``limit``), optionally only those whose actor starts with
        ``actor``; and the total recorded since start."""
        with self._audit_lock:
            rows = list(self._audit)
            total = self._audit_total
        if actor:
            rows = [r for r in rows if str(r.get("actor", "")).startswith(actor)]
        return total, rows[::-1][:limit]

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._state is None:
            self.step()
        self._thread = threading.Thread(target=self._run, name="live-cycle", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.history is not None:
            self.history.close()
            self.history = None

    def _run(self) -> None:
        period = self.opts.period_s
        next_t = self._mono() + period
        while not self._stop.is_set():
            wait = next_t - self._mono()
            if wait > 0 and self._stop.wait(wait):
                break
            self._lag_s = max(0.0, self._mono() - next_t)
            try:
                self.step()
            except Exception as exc:  # never let the cycle thread die: count it, show it, go on
                self._error(f"cycle failed: {type(exc).__name__}: {exc}")
            next_t += period
            if self._mono() - next_t > 10 * period:  # far behind: do not try to catch up in a burst
                next_t = self._mono()

    # ------------------------------------------------------------------ the cycle

    def step(self) -> LiveState:
        """Run one cycle and publish its state. Errors are counted and reported; the runtime keeps going."""
        t0 = self._mono()
        self._apply_commands()
        try:
            snap = self._advance()
        except Exception as exc:  # a failing cycle is reported, counted and retried at the next one
            self._error(f"cycle failed: {type(exc).__name__}: {exc}")
            if self._state is None:
                raise
            return self._state
        self._collect_policy_audit()
        context = self._context(snap, t0)
        alerts = self._evaluate_alerts(snap, context)
        self._run_forecast(snap)
        self.cycles += 1
        self._cycle_ms.append((self._mono() - t0) * 1e3)
        state = self._publish(snap, alerts)
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception as exc:
                self._error(f"listener failed: {exc}")
        return state

    def _advance(self) -> Snapshot:
        """Drive the site and its energy for one cycle and return the ingested snapshot (the subclass)."""
        raise NotImplementedError

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        self._record({"t_s": self.twin.now_s, "actor": "runtime", "mode": "error", "why": message})

    def demand_15min_w(self) -> float:
        w = self._grid_window
        ok = np.isfinite(w)
        return float(w[ok].mean()) if ok.any() else float("nan")

    def _context(self, snap: Snapshot, t0: float) -> dict[str, float]:
        """The runtime facts the alert rules need that the snapshot lacks (the agreed keys)."""
        status = self._policy_status()
        ctx: dict[str, float] = {
            "t_s": snap.t_s,
            "cycle_lag_s": self._lag_s,
            "cycle_ms": (self._mono() - t0) * 1e3,
            "source_age_s": max(0.0, self.twin.now_s - snap.t_s),
            "planner_failed": float(status.get("planner_failed", 0.0)),
            "safe_mode": float(status.get("safe_mode", 0.0)),
            "demand_15min_w": self.demand_15min_w(),
            "contract_w": self.site.electrical.contract_demand_kw * 1e3,
            "nominal_frequency_hz": float(self.site.grid.frequency_hz),
        }
        ctx.update(self._plant_context())
        ctx.update(self._forecast_context())
        return ctx

    def _policy_status(self) -> dict[str, float]:
        """What the energy policy reports of itself once a cycle (``Policy.status()``, and the bus runtime's
        ``BusEnergy.status()``: safe mode, planner failure, ...)."""
        try:
            return dict(self.policy.status())
        except Exception as exc:  # a broken status must not stop the alerts
            self._error(f"policy status failed: {exc}")
            return {}

    def _plant_context(self) -> dict[str, float]:
        """The newest grid power, frequency and islanding, where known (the subclass)."""
        return {}

    def _evaluate_alerts(self, snap: Snapshot, context: dict[str, float]) -> list[dict[str, Any]] | None:
        if self.alerts is None:
            return None
        try:
            for tr in self.alerts.evaluate(snap, context) or []:
                self._record({"t_s": snap.t_s, "actor": "alerts", "mode": "alert", **_jsonable(tr)})
            return list(self.alerts.active())
        except Exception as exc:
            self._error(f"alert evaluation failed: {exc}")
            return None

    def _job_timeline(self, t_s: float) -> Any:
        """The scheduler's expected job timeline for the forecaster (None where unknown)."""
        return None

    def _run_forecast(self, snap: Snapshot) -> None:
        if self.forecaster is None:
            return
        try:
            self._feed_forecaster()
            self.forecaster.observe(snap)
            if snap.t_s >= self._next_forecast_s:
                self._next_forecast_s = snap.t_s + FORECAST_EVERY_S
                timeline = self._job_timeline(snap.t_s)
                self._forecast = self.forecaster.forecast(snap.t_s, timeline)
                racks = getattr(self.forecaster, "forecast_racks", None)
                if racks is not None:  # every rack at every horizon, ~2 ms a minute
                    self._forecast_racks = _rack_forecast_doc(snap.t_s, racks(snap.t_s, timeline))
                self.forecast_status = "ok"
        except Exception as exc:
            self.forecast_status = f"forecast failed: {exc}"
            self._error(self.forecast_status)

    # ---- forecast hooks (issue 5): placement and weather in, the monitor's degradation alert out -------------

    _forecast_degraded = 0.0  # the monitor's alert, as the context's forecast_degraded (1 while firing)

    def _feed_forecaster(self) -> None:
        """The GPU -> job placement (rack forecasts follow their jobs) and the weather year ahead (cooling)."""
        fc, twin = self.forecaster, self.twin
        if hasattr(fc, "set_placement"):
            fc.set_placement(getattr(twin, "workload", None))
        plant = getattr(twin, "plant", None)
        if hasattr(fc, "set_weather") and getattr(fc, "weather_c", None) is None and plant is not None:
            fc.set_weather(plant.outdoor_temp_c)

    def _forecast_context(self) -> dict[str, float]:
        """``forecast_degraded`` and ``forecast_error_ratio`` (rolling / backtest 15-min MAE) for the
        ``ForecastDegraded`` rule, from ``MonitoredForecaster.drain_alerts()``; each drained record is audited."""
        drain = getattr(self.forecaster, "drain_alerts", None)
        if drain is None:
            return {}
        try:
            for rec in drain():
                self._record({"t_s": rec.get("since_s"), "actor": "forecast", "mode": "alert", **_jsonable(rec)})
                self._forecast_degraded = 1.0 if rec.get("state") == "firing" else 0.0
            ratio = float(self.forecaster.error_ratio())
        except Exception as exc:  # a broken monitor must not stop the alerts
            self._error(f"forecast monitor failed: {exc}")
            return {}
        return {"forecast_degraded": self._forecast_degraded, "forecast_error_ratio": ratio}

    def _collect_policy_audit(self) -> None:
        records = self.policy.stats.audit
        if len(records) < self._policy_audit_seen:
            self._policy_audit_seen = 0
        for r in records[self._policy_audit_seen :]:
            self._record(_jsonable(r))
        self._policy_audit_seen = len(records)
        if len(records) > 2 * AUDIT_KEEP:  # the policy's own list would grow for ever in a live run
            del records[:AUDIT_KEEP]
            self._policy_audit_seen = len(records)

    def _record(self, rec: dict[str, Any]) -> None:
        rec = _jsonable(rec)
        line = json.dumps(rec)
        with self._audit_lock:
            self._audit.append(rec)
            self._audit_total += 1
            with self.audit_path.open("a") as f:
                f.write(line + "\n")
                full = f.tell() >= self.opts.audit_max_bytes
            if full:  # bounded on disk: one previous file is kept beside the current one
                self.audit_path.replace(self.audit_path.with_name("audit.1.jsonl"))

    def record_admin(self, actor: str, why: str) -> None:
        """Audit an administrative action taken outside the cycle (tokens created or revoked)."""
        self._record({"t_s": self.twin.now_s, "actor": f"admin:{actor}", "mode": "tokens", "why": why})

    # ------------------------------------------------------------------ operator commands

    def _execute(self, cmd: OperatorCommand) -> tuple[str, dict[str, Any]]:
        """Apply one operator command: (what was done, extra result fields); raises CommandRefused (the subclass)."""
        raise NotImplementedError

    def _apply_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            now = self.twin.now_s
            try:
                detail, extra = self._execute(cmd)
                status = "applied"
            except CommandRefused as exc:
                detail, extra, status = str(exc), {}, "refused"
            except Exception as exc:
                detail, extra, status = f"{type(exc).__name__}: {exc}", {}, "failed"
            with self._results_lock:
                self._results[cmd.id] = CommandResult(cmd.id, cmd.kind, status, detail, now, extra)
            self._record(
                {
                    "t_s": now,
                    "actor": f"operator:{cmd.actor}",
                    "mode": "command",
                    "command": cmd.kind,
                    "command_id": cmd.id,
                    "args": cmd.args,
                    "status": status,
                    "why": detail,
                }
            )

    # ------------------------------------------------------------------ publishing

    def _price_ahead(self, t_s: float) -> dict[str, list[float]]:
        key = int(t_s // 900)
        if key != self._prices_key:
            self._prices_key = key
            t = key * 900.0 + 900.0 * np.arange(97)
            p = tariff.price_per_kwh(t, self.site.tariff, self.site.timezone)
            self._prices = {"t_s": t.tolist(), "price_per_kwh": [round(float(x), 5) for x in p]}
        return self._prices

    def _site_view(self, snap: Snapshot) -> dict[str, Any]:
        raise NotImplementedError

    def _bess_rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _dr_view(self, t_s: float, site: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _jobs_arrays(self) -> tuple[dict[str, Any], list[str]]:
        raise NotImplementedError

    def _extra(self) -> dict[str, Any]:
        """Runtime-specific facts published beside the state (``LiveState.extra``)."""
        return {}

    def _publish(self, snap: Snapshot, alerts: list[dict[str, Any]] | None) -> LiveState:
        site = self._site_view(snap)
        self.series.push(snap.t_s, site)
        jobs, names = self._jobs_arrays()
        cms = np.array(self._cycle_ms) if self._cycle_ms else np.zeros(1)
        version = (self._state.version + 1) if self._state is not None else 1
        with self._audit_lock:
            audit_total = self._audit_total
        state = LiveState(
            version=version,
            t_s=snap.t_s,
            scenario=self.site.name,
            policy=self.policy.name,
            currency=self.site.tariff.currency,
            timezone=self.site.timezone,
            snapshot=snap,
            site=site,
            money={
                "currency": self.site.tariff.currency,
                "spent_today": round(self.ledger.spent, 2),
                "saved_today": round(self.ledger.saved, 2),
                "grid_import_today_mwh": round(self.ledger.energy_mwh, 3),
                "note": self.money_note,
            },
            prices=self._price_ahead(snap.t_s),
            bess=self._bess_rows(),
            plan=plan_view(self.policy, snap.t_s),
            dr=self._dr_view(snap.t_s, site),
            jobs=jobs,
            job_names=names,
            job_caps_w=dict(self.job_caps_w),
            alerts=alerts,
            alert_status=self.alert_status,
            forecast=self._forecast,
            forecast_racks=self._forecast_racks,
            forecast_status=self.forecast_status,
            cycle=CycleInfo(
                cycles=self.cycles,
                cycle_ms=float(cms[-1]),
                cycle_ms_p95=float(np.percentile(cms, 95)),
                lag_s=self._lag_s,
                period_s=self.opts.period_s,
                speed=self.opts.speed,
                steps_per_cycle=self.steps_per_cycle,
                errors=self.errors,
                last_error=self.last_error,
            ),
            audit_count=audit_total,
            extra=self._extra(),
        )
        self._state = state
        return state


def _jsonable(rec: Any) -> dict[str, Any]:
    out = clean(rec if isinstance(rec, dict) else {"value": rec})
    assert isinstance(out, dict)
    return out


def _rack_forecast_doc(t_s: float, fc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The forecaster's per-rack arrays as JSON-ready lists ([rack][horizon], W), stamped with when it was made."""
    if fc is None:
        return None
    return {"t_s": t_s, **{k: np.asarray(v, np.float64).tolist() for k, v in fc.items()}}
